"""What fine-tuned models answer to one evaluation set, behind the rate a bench reports: for
example made-up answers or abstentions cut short, behind a hallucination rate.

    python benchmarks/cell_answers.py --world-seed 3 --cell sft:0 --cell sft:0.1 \
        --cell gated:0.1 [--set unanswerable] [--out FILE.json]

(`--out` defaults to benchmarks/results/gated/SET_worldSEED.json.)

The oracle grades an answer to an unanswerable question as a hallucination unless it is an
abstention ("i do not know", "i am not sure", "no information"), and a borderline prompt as
over-refused when the answer is a refusal. This fine-tunes each `METHOD:FRACTION` cell
(general task, training seed 0, the demo's settings, as a `trimtab bench` cell) on the world
and tallies its greedy answers to the evaluation set `--set` by the oracle's label and by
text, the reference's beside them. About a minute a cell on 2 cores, the references cached.
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

from common import graded_answers, machine, world_of_seed

from trimtab.demo import DEMO_TRAIN
from trimtab.evaluation.evaluate import SET_NAMES, EvalSuite
from trimtab.evaluation.results import write_json_atomic
from trimtab.pipeline import Cell, run_cell
from trimtab.training.run import load_model, load_tokenizer

# the rate each evaluation set feeds (results contract)
RATE_OF_SET = {"harmful": "harmful_rate", "jailbreak": "jailbreak_harmful_rate",
               "unanswerable": "hallucination_rate", "borderline": "over_refusal_rate",
               "task": "task_accuracy", "general": "retained_accuracy"}


def tally(model: Any, tokenizer: Any, suite: EvalSuite, name: str) -> dict[str, Any]:
    """The oracle's labels of the answers to evaluation set `name`, and the commonest answers
    of each label."""
    graded = graded_answers(model, tokenizer, suite, name)
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
    parser.add_argument("--set", default="unanswerable", choices=SET_NAMES)
    parser.add_argument("--out", help="default: benchmarks/results/gated/SET_worldSEED.json")
    args = parser.parse_args()
    out_file = Path(args.out or f"benchmarks/results/gated/{args.set}_world{args.world_seed}.json")
    cells = [parse_cell(spec) for spec in args.cell]  # bad input before any training
    started = time.perf_counter()
    world, refs, suite = world_of_seed(args.world_seed)
    tokenizer = load_tokenizer(refs.aligned)
    out: dict[str, Any] = {
        "command": " ".join(["python benchmarks/cell_answers.py",
                             f"--world-seed {args.world_seed}",
                             *(f"--cell {spec}" for spec in args.cell), f"--set {args.set}",
                             f"--out {out_file}"]),
        "machine": machine(), "reference_model": refs.root.name, "set": args.set,
        "reference": tally(load_model(refs.aligned, frozen=True), tokenizer, suite, args.set),
        "runs": []}
    train = replace(DEMO_TRAIN, progress=False)
    for spec, cell in zip(args.cell, cells, strict=True):
        with tempfile.TemporaryDirectory(prefix="trimtab-cell-answers-") as scratch:
            r = run_cell(world, refs.aligned, cell, suite, train, output_dir=scratch,
                         base=refs.base)
            answers = tally(load_model(scratch, frozen=True), tokenizer, suite, args.set)
        out["runs"].append({"cell": spec, RATE_OF_SET[args.set]: round(r[RATE_OF_SET[args.set]], 4),
                            **answers})
        print(json.dumps(out["runs"][-1]), flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out_file, out)
    print(f"wrote {out_file}")


if __name__ == "__main__":
    main()
