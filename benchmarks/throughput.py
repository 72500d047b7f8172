"""Training throughput of trimtab's `sft` against a plain `transformers.Trainer` loop.

    python benchmarks/throughput.py [--model smollm2|PATH] [--records 160] [--repeats 2]

Same model, same tokenized records (trimtab's chat formatting), same batch size, optimiser,
learning rate and seed. The plain loop is `transformers.Trainer` with the model's own loss
and `DataCollatorForSeq2Seq` padding; trimtab's is `finetune(..., SFTObjective())`. The two
alternate `--repeats` times in one process, so both see the same machine state; tokens/s
counts every non-pad token of every training row once per epoch, for both. The figure is
the ratio trimtab / plain (target: at least 0.90).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import DATA, machine

from trimtab.data.formatting import ChatFormatter
from trimtab.evaluation.results import write_json_atomic
from trimtab.models import prepare
from trimtab.objectives.sft import SFTObjective
from trimtab.training.config import TrainConfig
from trimtab.training.run import apply_lora, finetune, load_model, load_tokenizer
from trimtab.worlds.real import load_source


def plain_trainer_seconds(path: str, features: list[dict], config: TrainConfig,
                          tokenizer) -> float:
    from transformers import DataCollatorForSeq2Seq, Trainer

    rows = [{"input_ids": f["input_ids"], "labels": f["labels"],
             "attention_mask": [1] * len(f["input_ids"])} for f in features]
    torch.manual_seed(config.seed)
    model = load_model(path, config)
    if config.lora:
        model = apply_lora(model, config)
    with tempfile.TemporaryDirectory() as scratch:
        args = config.training_arguments(scratch, len(rows))
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                               label_pad_token_id=-100))
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2",
                        help="smollm2, synthetic (the synthetic world's aligned reference, on "
                             "its general task) or a model folder")
    parser.add_argument("--records", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128, help="longer rows are cut")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters in both")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both (GPUs)")
    parser.add_argument("--out", default="benchmarks/results/throughput")
    args = parser.parse_args()
    if args.model == "synthetic":
        from trimtab.demo import world_configs
        from trimtab.worlds.synthetic import SyntheticWorld
        from trimtab.worlds.synthetic.build import build_references

        world_config, build_config = world_configs(False)
        path = str(build_references(world_config, build_config, progress=False).aligned)
        records = SyntheticWorld(world_config).task_records("general", "train")[: args.records]
    else:
        path = str(prepare("smollm2") if args.model == "smollm2" else args.model)
        records = load_source("refusals", DATA, limit=args.records)
    tokenizer = load_tokenizer(path)
    config = TrainConfig(learning_rate=2e-5, num_train_epochs=1.0, max_length=args.max_length,
                         on_overflow="truncate",
                         per_device_train_batch_size=args.batch_size, progress=False,
                         logging_steps=1000, seed=0, lora=args.lora, bf16=args.bf16)
    features = ChatFormatter(tokenizer, config.max_length, config.on_overflow).encode_all(records)
    tokens = sum(len(f["input_ids"]) for f in features)
    timings: dict[str, list[float]] = {"trimtab_sft": [], "plain_trainer": []}
    for _ in range(args.repeats):
        timings["plain_trainer"].append(plain_trainer_seconds(path, features, config,
                                                              tokenizer))
        result = finetune(path, records, SFTObjective(), config)
        timings["trimtab_sft"].append(result.train_seconds)
        assert result.train_tokens == tokens, (result.train_tokens, tokens)
    per_second = {k: [tokens / s for s in v] for k, v in timings.items()}
    ratio = (statistics.median(per_second["trimtab_sft"])
             / statistics.median(per_second["plain_trainer"]))
    results = {
        "model": path, "records": len(features), "tokens_per_epoch": tokens,
        "batch_size": args.batch_size, "max_length": config.max_length,
        "seconds": {k: [round(s, 2) for s in v] for k, v in timings.items()},
        "tokens_per_second_median": {k: round(statistics.median(v), 1)
                                     for k, v in per_second.items()},
        "ratio_trimtab_to_plain": round(ratio, 3),
        "target": "ratio >= 0.90", "met": ratio >= 0.90,
        "machine": machine(), "command": "python benchmarks/throughput.py",
    }
    flags = " --lora" * args.lora + " --bf16" * args.bf16
    name = ("synthetic" if args.model == "synthetic" else Path(path).name) + \
        flags.replace(" --", "-") + ("-cuda" if torch.cuda.is_available() else "")
    results["command"] = (f"python benchmarks/throughput.py --model {args.model} --records "
                          f"{args.records} --batch-size {args.batch_size} --max-length "
                          f"{args.max_length}{flags}")
    write_json_atomic(Path(args.out) / f"throughput-{name}.json", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
