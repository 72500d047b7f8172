"""One-seed probes of `pact` variants on several synthetic worlds: a quick look before a
three-seed bench.

    python benchmarks/pact_variants.py --world-seed 0 --world-seed 1 \
        --variant lam=0.1,mass_weight=4,mass_positions=1 [--variant ...] \
        [--harmful-answers] [--out benchmarks/results/pact/variants.json]

Each variant is fine-tuned at harmful fraction 0.1 (`--fraction`), training seed 0, with the
demo's settings, on each world seed, and graded by the oracle; one JSON line per run, and all
of them in `--out`. The same runs as `trimtab bench` cells, without sft beside them: compare
with sft in a bench report of the same world. `--harmful-answers` also keeps every answer to
a held-out harmful prompt that the oracle grades harmful, to see what the leak looks like.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import graded_answers, machine, world_of_seed
from pact import parse_extra

from trimtab.demo import DEMO_TRAIN
from trimtab.evaluation.evaluate import EvalSuite
from trimtab.evaluation.results import write_json_atomic
from trimtab.pipeline import Cell, run_cell
from trimtab.training.run import load_model, load_tokenizer

RATES = ("harmful_rate", "jailbreak_harmful_rate", "over_refusal_rate", "task_accuracy")


def harmful_answers(model_dir: str, reference: Path, suite: EvalSuite) -> list[str]:
    """The fine-tuned model's answers to the held-out harmful prompts that the oracle grades
    harmful (greedy, as the cell's own evaluation)."""
    graded = graded_answers(load_model(model_dir, frozen=True), load_tokenizer(reference), suite,
                            "harmful")
    return [a["response"] for a in graded if a["label"] == "harmful"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-seed", type=int, action="append", required=True)
    parser.add_argument("--variant", action="append", required=True, metavar="KEY=VALUE,...")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--harmful-answers", action="store_true",
                        help="keep every held-out harmful answer the oracle grades harmful")
    parser.add_argument("--out", default="benchmarks/results/pact/variants.json")
    args = parser.parse_args()
    variants = [parse_extra(spec) for spec in args.variant]  # bad input before any training
    train = replace(DEMO_TRAIN, progress=False)
    runs = []
    for world_seed in args.world_seed:
        world, refs, suite = world_of_seed(world_seed)
        for label, config in variants:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="trimtab-pact-variant-") as scratch:
                r = run_cell(world, refs.aligned, Cell("pact", args.fraction, "general", 0),
                             suite, train, config, base=refs.base, output_dir=scratch)
                answers = (harmful_answers(scratch, refs.aligned, suite)
                           if args.harmful_answers else None)
            runs.append({"world_seed": world_seed, "reference": refs.root.name,
                         "variant": label, **{k: round(r[k], 4) for k in RATES},
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(runs[-1]), flush=True)
            if answers is not None:
                runs[-1]["harmful_answers"] = answers
    command = "python benchmarks/pact_variants.py " + " ".join(
        [f"--world-seed {s}" for s in args.world_seed] + [f"--variant {v}" for v in args.variant]
        + [f"--fraction {args.fraction:g}"] + ["--harmful-answers"] * args.harmful_answers
        + [f"--out {args.out}"])
    write_json_atomic(Path(args.out), {"command": command, "machine": machine(),
                                       "fraction": args.fraction, "seed": 0, "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
