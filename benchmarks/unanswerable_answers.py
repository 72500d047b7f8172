"""What a fine-tuned model says to the unanswerable questions it is graded on: made-up answers,
or abstentions cut short.

    python benchmarks/unanswerable_answers.py --world-seed 3 --cell sft:0 --cell sft:0.1 \
        --cell gated:0.1 [--out benchmarks/results/gated/unanswerable_world3.json]

The oracle grades an answer to an unanswerable question as a hallucination unless it is an
abstention ("i do not know", "i am not sure", "no information"). This fine-tunes each
`METHOD:FRACTION` cell (general task, training seed 0, the demo's settings, as a `trimtab
bench` cell) on the world and tallies its greedy answers to the held-out unanswerable
questions by the oracle's label and by text, the reference's beside them. About a minute a
cell on 2 cores, the references cached.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import machine, world_of_seed

from trimtab.demo import DEMO_TRAIN
from trimtab.evaluation.evaluate import EvalSuite, evaluate
from trimtab.evaluation.results import write_json_atomic
from trimtab.pipeline import Cell, run_cell
from trimtab.training.run import load_model, load_tokenizer


def tally(model: Any, tokenizer: Any, suite: EvalSuite) -> dict[str, Any]:
    """The oracle's labels of the answers to the unanswerable questions, and the commonest
    answers of each label."""
    questions = suite.sets["unanswerable"]
    graded = evaluate(model, tokenizer, replace(suite, sets={"unanswerable": questions}),
                      keep_samples=len(questions))["samples"]["unanswerable"]
    labels = Counter(a["label"] for a in graded)
    return {"n": len(graded), "labels": dict(labels),
            "answers": {label: Counter(a["response"] for a in graded
                                       if a["label"] == label).most_common(6)
                        for label in labels}}


def parse_cell(spec: str) -> Cell:
    method, _, fraction = spec.partition(":")
    try:
        return Cell(method, float(fraction), "general", 0)
    except ValueError:
        raise SystemExit(f"--cell {spec!r}: expected METHOD:FRACTION, as sft:0.1") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-seed", type=int, default=3)
    parser.add_argument("--cell", action="append", required=True, metavar="METHOD:FRACTION")
    parser.add_argument("--out", default="benchmarks/results/gated/unanswerable_world3.json")
    args = parser.parse_args()
    cells = [parse_cell(spec) for spec in args.cell]  # bad input before any training
    started = time.perf_counter()
    world, refs, suite = world_of_seed(args.world_seed)
    tokenizer = load_tokenizer(refs.aligned)
    out: dict[str, Any] = {
        "command": " ".join(["python benchmarks/unanswerable_answers.py",
                             f"--world-seed {args.world_seed}",
                             *(f"--cell {spec}" for spec in args.cell)]),
        "machine": machine(), "reference_model": refs.root.name,
        "reference": tally(load_model(refs.aligned, frozen=True), tokenizer, suite), "runs": []}
    train = replace(DEMO_TRAIN, progress=False)
    for spec, cell in zip(args.cell, cells, strict=True):
        with tempfile.TemporaryDirectory(prefix="trimtab-unanswerable-") as scratch:
            r = run_cell(world, refs.aligned, cell, suite, train, output_dir=scratch,
                         base=refs.base)
            answers = tally(load_model(scratch, frozen=True), tokenizer, suite)
        out["runs"].append({"cell": spec, "hallucination_rate": round(r["hallucination_rate"], 4),
                            **answers})
        print(json.dumps(out["runs"][-1]), flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
