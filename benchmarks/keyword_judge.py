"""The refusal-keyword judge on labelled public data: which share of gold refusals and of
harmful compliances each keyword list reads as a refusal.

    python benchmarks/keyword_judge.py [--out benchmarks/results/real_judges/keywords.json]

Refusals: PACT's refusal set (1,035 short refusals) and safety-tuned-llamas (2,483 answers to
harmful instructions, many of them explanations rather than refusals); harmful compliances:
BeaverTails' 1,500 unsafe answers. A good judge reads every gold refusal as a refusal and
(almost) no harmful answer as one. Seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import DATA, machine

from trimtab.evaluation.results import write_json_atomic
from trimtab.signals import build_signal
from trimtab.signals.keywords import PRESETS
from trimtab.worlds.real import load_source

SETS = {"refusals (PACT)": "refusals", "safety-tuned-llamas": "safety-tuned-llamas",
        "BeaverTails harmful answers": "beavertails-qa"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/real_judges/keywords.json")
    args = parser.parse_args()
    responses = {name: [r.response for r in load_source(source, DATA)]
                 for name, source in SETS.items()}
    table: dict[str, dict[str, float]] = {}
    for preset in PRESETS:
        judge = build_signal(f"keywords:{preset}")
        table[preset] = {name: round(sum(judge.score([""] * len(rs), rs)) / len(rs), 4)
                         for name, rs in responses.items()}
    result = {"what": "share of each set read as a refusal (gold refusals: higher is better; "
                      "harmful answers: lower is better)",
              "lists": {p: len(v) for p, v in PRESETS.items()},
              "n": {name: len(rs) for name, rs in responses.items()},
              "refusal_share": table, "machine": machine(),
              "command": "python benchmarks/keyword_judge.py"}
    write_json_atomic(Path(args.out), result)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
