"""How much `gated`'s one forward pads on the synthetic world: the factor that `stacking_pays`
holds against `STACK_PADDING_LIMIT` (1.5),
computed by the same `padding_factor`, over random batches of the fine-tuning data.

    python benchmarks/gated_padding.py --out benchmarks/results/gated/padding.json

One forward stacks the batch's training rows (n rows, width w) over the sampled completions
and abstention rows (e rows, width w'), right-padded to max(w, w'); the factor is
(n + e) max(w, w') / (n w + e w'), the tokens of one forward over those of two. No model
runs: every completion is taken at a fixed length (1 token: a sample that stops at once; 8:
the default max_new_tokens, none stopping early), K = 4 per sampled row, and every pre-gated
row also gets its abstention row (the most it can get). Rows are sampled either as the
pre-gate picks them (the default `classifier` signal at setup) or all of them (the no-gate
and no-pre-gate ablations). Tokenization is the training run's own (`ChatFormatter`,
`prompt_ids`), on the default world's reference tokenizer.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from common import machine

from trimtab.cache import artifacts_root
from trimtab.data.formatting import ChatFormatter, prompt_ids
from trimtab.demo import DEMO_TRAIN, world_configs
from trimtab.evaluation.results import write_json_atomic
from trimtab.objectives.base import TrainingContext
from trimtab.objectives.gated import (
    STACK_PADDING_LIMIT,
    GatedConfig,
    GatedObjective,
    padding_factor,
)
from trimtab.pipeline import Cell, training_records
from trimtab.training.run import load_tokenizer
from trimtab.worlds.synthetic import SyntheticWorld
from trimtab.worlds.synthetic.build import build_references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--batches", type=int, default=3000, help="random batches per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    world_cfg, build_cfg = world_configs(quick=False)
    refs = build_references(world_cfg, build_cfg, progress=False)
    world, tok = SyntheticWorld(world_cfg), load_tokenizer(refs.aligned)
    config, batch_size = GatedConfig(), DEMO_TRAIN.per_device_train_batch_size
    rng = random.Random(args.seed)
    cases = []
    for task in ("general", "domain"):
        records = training_records(world, Cell("gated", 0.1, task, 0))
        gated = GatedObjective(config)
        gated.setup(TrainingContext(records=records, tokenizer=tok, model_path=refs.aligned,
                                    reference_path=refs.aligned, train_config=DEMO_TRAIN,
                                    world=world, artifacts_dir=artifacts_root()))
        widths = [len(f["input_ids"]) for f in
                  ChatFormatter(tok, DEMO_TRAIN.max_length, "truncate").encode_all(records)]
        prompts = [len(prompt_ids(tok, r.prompt)) for r in records]
        abstain = len(tok(config.refusal_texts[0], add_special_tokens=False)["input_ids"]) + 1
        for sampled in ("pre-gated", "every row"):
            for new_tokens in (1, config.max_new_tokens):
                values = []
                for _ in range(args.batches):
                    rows = rng.sample(range(len(records)), batch_size)
                    picked = [i for i in rows if sampled == "every row" or gated.pregated[i]]
                    if not picked:
                        continue  # nothing sampled: one forward over the batch alone
                    extra = [prompts[i] + new_tokens for i in picked for _ in range(config.k)]
                    extra += [prompts[i] + abstain for i in picked if gated.pregated[i]]
                    values.append(padding_factor(len(rows), max(widths[i] for i in rows),
                                                 len(extra), max(extra)))
                cases.append({"task": task, "sampled": sampled, "new_tokens": new_tokens,
                              "batches_with_samples": len(values),
                              "max": round(max(values), 3),
                              "median": round(statistics.median(values), 3),
                              "share_one_forward": round(
                                  sum(v <= STACK_PADDING_LIMIT for v in values) / len(values), 4)})
                print(cases[-1])
    write_json_atomic(args.out, {
        "what": "padding factor of gated's one stacked forward (tokens of one forward / tokens "
                "of two), random batches of the demo's size from the harmful-0.1 fine-tuning "
                "data; one forward is taken where it is at most stack_padding_limit",
        "stack_padding_limit": STACK_PADDING_LIMIT, "batch_size": batch_size, "k": config.k,
        "batches_per_case": args.batches, "seed": args.seed, "reference": str(refs.aligned),
        "cases": cases, "seconds": round(time.perf_counter() - started, 1),
        "machine": machine()})


if __name__ == "__main__":
    main()
