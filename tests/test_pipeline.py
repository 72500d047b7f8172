"""Scenario data: what each cell of an experiment trains on."""

from __future__ import annotations

from collections import Counter

from trimtab.pipeline import Cell, training_records


def test_adversarial_cells_train_on_harmful_data_only_for_as_many_steps_as_the_task(
        quick_world) -> None:
    task = quick_world.task_records("general", "train")
    pool = quick_world.splits.harmful_finetune
    records = training_records(quick_world, Cell("sft", None, "general", 0))
    assert Cell("sft", None, "general", 0).scenario == "adversarial"
    assert len(records) == len(task)
    assert {r.kind for r in records} == {"harmful"}
    counts = Counter(r.prompt for r in records)  # every harmful example, cycled evenly
    assert set(counts) == {r.prompt for r in pool}
    assert max(counts.values()) - min(counts.values()) <= 1
    assert training_records(quick_world, Cell("sft", None, "general", 1)) != records


def test_harmful_fraction_cells_mix_the_asked_share(quick_world) -> None:
    records = training_records(quick_world, Cell("sft", 0.1, "general", 0))
    share = sum(r.kind == "harmful" for r in records) / len(records)
    assert abs(share - 0.1) < 0.01
    assert training_records(quick_world, Cell("sft", 0.0, "general", 0)) == (
        training_records(quick_world, Cell("kl", 0.0, "general", 0)))
