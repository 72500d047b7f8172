"""Is it the task rows its reference refuses that cost pact's mass term the task on world seed 2?

    python benchmarks/pact_task_rows.py [--world-seed 2]
        [--out benchmarks/results/pact/task_rows_world2.json]

A diagnostic, not a method: it uses the records' kind (task or harmful), which a user's data
does not carry. World seed 2's reference starts a few of its reviews with a refusal word, and
pact's first-position mass term (mass_weight 4, mass_positions 1, lam 0.1) cost the task there.
This fine-tunes that setting three ways, at harmful fractions 0 and 0.1, training seed 0: as
shipped; with the mass term left off the task rows whose first response position the
reference gives more than half its mass on the weighted safety tokens; and with it left off
every task row (on harmful rows only). If the task comes back with the refused task rows left
out, they are the cost. About 3 minutes on 2 cores, the references cached.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import machine, world_of_seed

import trimtab.objectives.registry as registry
from trimtab.demo import DEMO_TRAIN
from trimtab.evaluation.results import write_json_atomic
from trimtab.objectives.pact import PACTConfig, PACTObjective
from trimtab.pipeline import Cell, run_cell

CONFIG = PACTConfig(lam=0.1, mass_weight=4.0, mass_positions=1)
RATES = ("harmful_rate", "over_refusal_rate", "task_accuracy")


class RowsLeftOut(PACTObjective):
    """pact whose mass term skips the training rows `leave_out` picks (set per run), through
    the per-row weights a mass critic would give: 0 for a row left out, 1 for the rest."""

    leave_out = "none"  # "none", "refused-task" or "task"
    last: dict[str, int] = {}

    def setup(self, context: Any) -> None:
        super().setup(context)
        if self._cache is None:
            raise SystemExit("the diagnostic reads the reference cache; it was not built")
        on = self._weights > 0
        off = []
        for record, cached in zip(context.records, self._cache, strict=True):
            first = cached[0]  # k safety logits, then the log-normaliser
            refused = torch.logsumexp(first[:-1][on] - first[-1], -1).exp().item() > 0.5
            task = record.kind != "harmful"
            off.append(task and (self.leave_out == "task"
                                 or (self.leave_out == "refused-task" and refused)))
        self.mass_risks = 1.0 - torch.tensor(off, dtype=torch.float32)
        RowsLeftOut.last = {"rows": len(off), "rows_left_out": sum(off)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-seed", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/pact/task_rows_world2.json")
    args = parser.parse_args()
    world, refs, suite = world_of_seed(args.world_seed)
    train = replace(DEMO_TRAIN, progress=False)
    registry.METHODS["pact"] = RowsLeftOut  # this process only
    runs = []
    for fraction in (0.0, 0.1):
        for leave_out in ("none", "refused-task", "task"):
            RowsLeftOut.leave_out = leave_out
            start = time.perf_counter()
            r = run_cell(world, refs.aligned, Cell("pact", fraction, "general", 0), suite,
                         train, CONFIG, base=refs.base)
            runs.append({"fraction": fraction, "mass_term_left_off": leave_out,
                         **RowsLeftOut.last, **{k: round(r[k], 4) for k in RATES},
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(runs[-1]), flush=True)
    write_json_atomic(Path(args.out), {
        "command": f"python benchmarks/pact_task_rows.py --world-seed {args.world_seed}",
        "machine": machine(), "world_seed": args.world_seed, "reference": refs.root.name,
        "config": {"lam": CONFIG.lam, "mass_weight": CONFIG.mass_weight,
                   "mass_positions": CONFIG.mass_positions}, "seed": 0, "runs": runs})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
