"""The synthetic world's evaluation suite: its held-out sets graded by its oracle."""

from __future__ import annotations

from trimtab.evaluation.evaluate import EvalSuite
from trimtab.worlds.synthetic.generator import SyntheticWorld
from trimtab.worlds.synthetic.oracle import SyntheticOracle


def synthetic_suite(world: SyntheticWorld, task: str = "general") -> EvalSuite:
    sets = dict(world.splits.eval_sets)
    sets["task"] = world.task_records(task, "test")
    return EvalSuite(sets=sets, judge=SyntheticOracle(world.all_records), max_new_tokens=24)
