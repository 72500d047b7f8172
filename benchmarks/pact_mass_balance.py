"""Why pact's opt-in mass weight does not carry over between synthetic worlds.

    python benchmarks/pact_mass_balance.py [--world-seed N ...]
        [--out benchmarks/results/pact/mass_balance.json]

The mass term (`mass_weight` w) is a binary KL between the reference's and the policy's total
probability m on the weighted safety tokens. On a harmful fine-tuning row the CE pulls the
first response position toward the compliance's first word, outside S; with the two terms
alone, the mass that balances them is m* = w * m_ref / (1 + w) (setting the derivatives of
-log(1 - m) and w * KL(m_ref || m) equal). At w = 1 the policy keeps about half of the
reference's refusal mass on the rows it trains on. The other half goes to the compliances'
first words, so greedy decoding still starts most new harmful prompts with "i", but with a
thin margin: how many prompts tip over to a compliance is a property of the world.

For world seeds 0 and 1, w 1 and 4 at every position and w 4 at the first position only
(`mass_positions=1`; lam 0.1, harmful fraction 0.1, training seed 0, the benchmark's
settings) this fine-tunes pact and measures, at the first response position: the
reference's and the policy's safety mass on the harmful rows it trains on, on the held-out harmful
prompts and on the task's prompts, the share of prompts whose safety mass is below one half,
and the share whose greedy first word is a weighted safety token. It also sorts the task
answers it gets wrong: a bare label, or one with weighted safety words in it. About 3 minutes
on 2 cores, the references cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import machine, world_of_seed

from trimtab.cache import artifacts_root
from trimtab.data.formatting import ChatFormatter
from trimtab.demo import DEMO_TRAIN
from trimtab.evaluation.evaluate import evaluate
from trimtab.evaluation.results import write_json_atomic
from trimtab.objectives.pact import PACTConfig
from trimtab.pipeline import Cell, run_cell, training_records
from trimtab.safety_tokens import SafetyTokenConfig, cached_world_tokens, reference_token_logits
from trimtab.training.run import load_model, load_tokenizer

WORLD_SEEDS = (0, 1)
# (mass_weight, mass_positions): every position at w 1 and 4, and the first position at w 4
MASS_TERMS = ((1.0, 0), (4.0, 0), (4.0, 1))
LAM = 0.1


def first_position(model: Any, tokenizer: Any, records: list, ids: torch.Tensor,
                   on: torch.Tensor) -> dict[str, torch.Tensor]:
    """At the first response position of each record (it depends on the prompt alone): the
    full-softmax probability of the weighted safety tokens (`mass`), of the likeliest of them
    (`top_safety`), and whether greedy decoding starts with one of them (`starts_safe`)."""
    features = ChatFormatter(tokenizer, DEMO_TRAIN.max_length, "truncate").encode_all(records)
    # every column: the (n, V) logits of one position are small on this world
    every = torch.arange(model.get_output_embeddings().weight.shape[0])
    rows = reference_token_logits(model, features, len(records), tokenizer.pad_token_id, every,
                                  32)
    logp = torch.log_softmax(torch.stack([r[0] for r in rows]), -1)
    weighted = ids[on]
    return {"mass": logp[:, weighted].logsumexp(-1).exp(),
            "top_safety": logp[:, weighted].max(-1).values.exp(),
            "starts_safe": torch.isin(logp.argmax(-1), weighted).float()}


def summary(measured: dict[str, torch.Tensor]) -> dict[str, float]:
    mass = measured["mass"]
    return {"mass_mean": round(mass.mean().item(), 4),
            "mass_median": round(mass.median().item(), 4),
            "mass_below_half": round((mass < 0.5).float().mean().item(), 4),
            "top_safety_token_mean": round(measured["top_safety"].mean().item(), 4),
            "greedy_starts_with_a_safety_token": round(measured["starts_safe"].mean().item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/pact/mass_balance.json")
    parser.add_argument("--world-seed", type=int, action="append",
                        help=f"a world seed (repeatable; default {WORLD_SEEDS})")
    args = parser.parse_args()
    started = time.perf_counter()
    train = replace(DEMO_TRAIN, progress=False)
    seeds = args.world_seed or WORLD_SEEDS
    command = " ".join(["python benchmarks/pact_mass_balance.py",
                        *(f"--world-seed {s}" for s in args.world_seed or ())])
    out: dict[str, Any] = {"command": command,
                           "machine": machine(), "lam": LAM, "fraction": 0.1, "seed": 0,
                           "worlds": {}}
    for world_seed in seeds:
        world, refs, suite = world_of_seed(world_seed)
        tokens, _ = cached_world_tokens(refs.aligned, refs.base, world, artifacts_root(),
                                        SafetyTokenConfig())
        ids = torch.tensor(tokens.token_ids)
        on = torch.tensor(tokens.weights) > 0
        words = {tokens.tokens[i].strip() for i in range(len(ids)) if on[i]}
        cell = Cell("pact", 0.1, "general", 0)
        pool = {(r.prompt, r.response) for r in world.splits.harmful_finetune}
        trained = [r for r in training_records(world, cell) if (r.prompt, r.response) in pool]
        sets = {"harmful_train": trained,
                "harmful_eval": suite.sets["harmful"], "task_eval": suite.sets["task"]}
        tokenizer = load_tokenizer(refs.aligned)
        reference = load_model(refs.aligned, frozen=True)
        ref_mass = {name: first_position(reference, tokenizer, records, ids, on)
                    for name, records in sets.items()}
        entry: dict[str, Any] = {
            "reference_model": refs.root.name, "harmful_rows_trained": len(trained),
            "weighted_safety_tokens": sorted(words),
            "reference": {name: summary(m) for name, m in ref_mass.items()}, "runs": []}
        for weight, positions in MASS_TERMS:
            config = PACTConfig(lam=LAM, mass_weight=weight, mass_positions=positions)
            with tempfile.TemporaryDirectory(prefix="trimtab-mass-balance-") as scratch:
                r = run_cell(world, refs.aligned, cell, suite, train, config,
                             output_dir=scratch, base=refs.base)
                policy = load_model(scratch, frozen=True)
                mass = {name: first_position(policy, tokenizer, records, ids, on)
                        for name, records in sets.items()}
                answers = evaluate(policy, tokenizer, replace(suite, sets={
                    "task": suite.sets["task"]}), keep_samples=10**6)["samples"]["task"]
            wrong = [a["response"] for a in answers if a["label"] != "correct"]
            with_safety_words = sum(1 for a in wrong if words & set(a.split()))
            predicted = weight * ref_mass["harmful_train"]["mass"].mean().item() / (1 + weight)
            entry["runs"].append({
                "mass_weight": weight, "mass_positions": positions,
                "harmful_rate": r["harmful_rate"],
                "task_accuracy": r["task_accuracy"],
                "over_refusal_rate": r["over_refusal_rate"],
                "predicted_harmful_train_mass": round(predicted, 4),
                "policy": {name: summary(m) for name, m in mass.items()},
                "task_wrong": len(wrong),
                "task_wrong_bare_label": sum(1 for a in wrong if len(a.split()) == 1),
                "task_wrong_with_safety_words": with_safety_words,
                "task_wrong_examples": wrong[:8]})
            print(json.dumps({"world_seed": world_seed, **entry["runs"][-1]}), flush=True)
        out["worlds"][str(world_seed)] = entry
    out["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
