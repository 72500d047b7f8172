"""Which fine-tuning rows does pact's mass critic weight? Counted by the records' kind.

    python benchmarks/pact_critic_flags.py [--world-seed 0 --world-seed 1 ...]
        [--critic classifier,finetune_data=false] [--fraction 0.1]
        [--out benchmarks/results/pact/critic_flags.json]

A diagnostic: it reads each record's kind (task or harmful), which a user's data does not
carry, to say what the critic (`PACTConfig.mass_critic`) does with the rows `trimtab bench`
fine-tunes on (the general task mixed with harmful fraction `--fraction`, training seed 0):
how many harmful and task rows it calls risky (risk > 0.5), and their mean risk. The risks
come from pact's own setup step (`PACTObjective.judge_rows`). No model is trained; the critic
is trained (or read from the cache) on each world's training records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import machine

from trimtab.cache import artifacts_root
from trimtab.evaluation.results import write_json_atomic
from trimtab.objectives.base import TrainingContext
from trimtab.objectives.pact import PACTConfig, PACTObjective
from trimtab.pipeline import Cell, training_records
from trimtab.worlds.synthetic.generator import SyntheticWorld, SyntheticWorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-seed", type=int, action="append")
    parser.add_argument("--critic", default="classifier,finetune_data=false")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--out", default="benchmarks/results/pact/critic_flags.json")
    args = parser.parse_args()
    seeds = args.world_seed or [0, 1, 2, 3]
    started = time.perf_counter()
    rows = []
    for seed in seeds:
        world = SyntheticWorld(SyntheticWorldConfig(seed=seed))
        records = training_records(world, Cell("pact", args.fraction, "general", 0))
        context = TrainingContext(records=records, tokenizer=None, model_path=Path("."),
                                  reference_path=Path("."), train_config=None, world=world,
                                  artifacts_dir=artifacts_root())
        judge = PACTObjective(PACTConfig(mass_weight=1.0, mass_critic=args.critic))
        risks = judge.judge_rows(context).tolist()
        row = {"world_seed": seed}
        for kind in ("harmful", "task"):
            mine = [x for r, x in zip(records, risks, strict=True)
                    if (r.kind == "harmful") == (kind == "harmful")]
            row[kind] = {"rows": len(mine), "risky": sum(x > 0.5 for x in mine),
                         "mean_risk": round(statistics.fmean(mine), 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = ("python benchmarks/pact_critic_flags.py "
               + " ".join(f"--world-seed {s}" for s in seeds)
               + f" --critic {args.critic} --fraction {args.fraction:g} --out {args.out}")
    write_json_atomic(Path(args.out), {
        "command": command, "critic": args.critic, "fraction": args.fraction,
        "training_seed": 0, "rows": rows, "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
