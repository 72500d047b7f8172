"""One cell of an experiment: fine-tune a reference with a method in a scenario, then evaluate.

`trimtab demo` (and later `trimtab bench`) are loops over `run_cell`; the run dicts they
collect are the `runs` of `results.json`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trimtab.config import config_to_dict
from trimtab.data.mixing import mix
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.evaluation.evaluate import EvalSuite, evaluate
from trimtab.objectives.registry import METHODS, build_objective, get_method
from trimtab.training.config import TrainConfig
from trimtab.training.run import compute_device, finetune, load_model, load_tokenizer
from trimtab.worlds.synthetic.generator import SyntheticWorld
from trimtab.worlds.synthetic.oracle import SyntheticOracle


def scenario_name(fraction: float | None) -> str:
    """`benign` for 0, `adversarial` for None (all harmful), else `harmful-<p>`."""
    if fraction is None:
        return "adversarial"
    return "benign" if fraction == 0 else f"harmful-{fraction:g}"


@dataclass
class Cell:
    method: str
    fraction: float | None  # None: adversarial (harmful data only)
    task: str
    seed: int
    scenario_override: str | None = None  # e.g. `unsafe-init`, where the start model differs

    @property
    def scenario(self) -> str:
        return self.scenario_override or scenario_name(self.fraction)


def training_records(world: SyntheticWorld, cell: Cell) -> list[Record]:
    """The task's training set with the scenario's harmful fraction mixed in.

    The adversarial set is the harmful pool only, cycled (each pass reshuffled) to the size
    of the task set: the attacker gets the same number of steps as a task fine-tune, not a
    handful of steps that leave the model as it was.
    """
    harmful = world.splits.harmful_finetune
    if cell.fraction is None:
        rng, records = random.Random(cell.seed), []
        n = max(len(harmful), len(world.task_records(cell.task, "train")))
        while len(records) < n:
            batch = list(harmful)
            rng.shuffle(batch)
            records.extend(batch[: n - len(records)])
        return records
    return mix(world.task_records(cell.task, "train"), harmful, cell.fraction, seed=cell.seed)


def model_metrics(path: str | Path, suite: EvalSuite, progress: bool = False) -> dict[str, Any]:
    model, tokenizer = load_model(path).to(compute_device()), load_tokenizer(path)
    return evaluate(model, tokenizer, suite, progress=progress)


def run_cell(world: SyntheticWorld, reference: str | Path, cell: Cell, suite: EvalSuite,
             train_config: TrainConfig, method_config: Any | None = None,
             output_dir: str | Path | None = None, progress: bool = False, *,
             start_model: str | Path | None = None,
             base: str | Path | None = None,
             posthoc_config: Any | None = None) -> dict[str, Any]:
    """Fine-tune for one cell, evaluate, and return its results-contract run.

    Training starts from `start_model` (default: `reference`, the aligned model); the
    frozen reference of KL-style objectives is always `reference`. `base` is the world's
    unaligned model, for objectives that compare against it. A method `x+step` fine-tunes
    with `x`, then applies the post-hoc `step` (`posthoc_run`).
    """
    method, posthoc = split_method(cell.method)
    objective = build_objective(method, method_config)
    if isinstance(suite.judge, SyntheticOracle):
        check_not_trained_on_oracle(method, objective.config)
    train_config = seeded(train_config, cell.seed)
    records = training_records(world, cell)
    result = finetune(start_model or reference, records, objective, train_config,
                      reference_path=reference, output_dir=output_dir, base_path=base,
                      world=world)
    metrics = evaluate(result.model, result.tokenizer, suite, progress=progress)
    run = {
        "method": method,
        "scenario": cell.scenario,
        "task": cell.task,
        "seed": cell.seed,
        **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
        "train_seconds": round(result.train_seconds, 3),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "tokens_per_second": round(result.tokens_per_second, 1),
        "n_train_records": len(records),
        "labels": metrics["labels"],
        "samples": metrics["samples"],
        "log_history": result.log_history,
        "config": recorded_config(objective.config, train_config),
    }
    if posthoc is None:
        return run
    return posthoc_run(run, result.model, result.tokenizer, posthoc, world, reference, suite,
                       base=base, config=posthoc_config, progress=progress)


def check_not_trained_on_oracle(method: str, config: Any) -> None:
    """DESIGN.md's rule, enforced where the synthetic world's oracle grades a run: a method
    never trains on the judge that grades it (it could look safe by gaming it), so a `gated`
    signal, a `risk-kl` critic or a `pact` mass critic naming `oracle` (any spec a config's
    `training_signals()` names) is refused before any training."""
    from trimtab.signals import parse_spec

    for part in config.values() if isinstance(config, dict) else [config]:
        specs = part.training_signals() if hasattr(part, "training_signals") else {}
        for field_name, spec in specs.items():
            if parse_spec(spec)[0] == "oracle":
                raise TrimtabError(
                    f"{method} would train on `{field_name}: {spec}`, the oracle that "
                    "evaluates this run; a method graded by its own training signal can look "
                    "safe by gaming it. Train on another signal (the default `classifier`, "
                    "hf:PATH, guard:PATH, http:URL or embedding:DIR).")


def seeded(train_config: TrainConfig, seed: int) -> TrainConfig:
    """A cell's training settings: the run's, with the cell's seed."""
    return TrainConfig(**{**config_to_dict(train_config), "seed": seed})


def recorded_config(method_config: Any, train_config: TrainConfig) -> dict[str, Any]:
    """What a run records under `config` (a post-hoc step adds its own key): `trimtab bench`
    compares a stored cell's record with this to tell a cell run under other defaults."""
    return {"method": _plain_config(method_config), "train": config_to_dict(train_config)}


def _plain_config(config: Any) -> dict[str, Any]:
    """A method's config as plain data; a composed method's is one dict per part."""
    if isinstance(config, dict):
        return {name: config_to_dict(part) for name, part in config.items()}
    return config_to_dict(config)


def split_method(name: str) -> tuple[str, str | None]:
    """`sft+recover` -> (`sft`, `recover`); `pact+gated` -> (`pact+gated`, None), a composed
    objective; a post-hoc step, if any, is the last part."""
    from trimtab.recovery import POSTHOC_STEPS

    parts = name.split("+")
    if any(not p for p in parts):
        raise TrimtabError(f"method {name!r} has an empty part; write METHOD, METHOD+METHOD "
                           "(composed) or METHOD+STEP (post-hoc).")
    step = parts.pop() if len(parts) > 1 and parts[-1] in POSTHOC_STEPS else None
    for part in parts:
        if part in POSTHOC_STEPS:
            raise TrimtabError(f"post-hoc step {part!r} must come last in method {name!r}, "
                               f"as in sft+{part}.")
        if len(parts) + (step is not None) > 1 and part not in METHODS:
            import difflib

            known = [*METHODS, *POSTHOC_STEPS]
            close = difflib.get_close_matches(part, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TrimtabError(f"unknown method or post-hoc step {part!r} in {name!r}.{hint} "
                               f"Parts are methods ({', '.join(sorted(METHODS))}) or, last, a "
                               f"post-hoc step ({', '.join(POSTHOC_STEPS)}).")
        get_method(part)
    objective = "+".join(parts)
    if len(parts) > 1:
        build_objective(objective)  # the composition itself is valid (fails fast otherwise)
    return objective, step


def posthoc_run(run: dict[str, Any], model: Any, tokenizer: Any, step: str,
                world: SyntheticWorld, reference: str | Path, suite: EvalSuite, *,
                base: str | Path | None = None, config: Any | None = None,
                progress: bool = False) -> dict[str, Any]:
    """The run of `model` (fine-tuned, described by `run`) after post-hoc `step`.

    The fine-tuned metrics move under `before`; the step's own time, peak memory and log
    are kept, and `train_seconds` becomes fine-tuning plus the step (the cost of the model).
    """
    from trimtab.recovery import SYNTHETIC_POSTHOC, apply_posthoc, synthetic_recovery_data

    config = config or SYNTHETIC_POSTHOC[step]
    data = synthetic_recovery_data(world, run["task"], config) if step == "recover" else None
    model, log = apply_posthoc(step, model, tokenizer, aligned=reference, base=base, data=data,
                               config=config)
    metrics = evaluate(model, tokenizer, suite, progress=progress)
    seconds = log["total_seconds"]
    before = {k: v for k, v in run.items() if k in metrics and not isinstance(v, dict)}
    return {
        **run,
        **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
        "method": f"{run['method']}+{step}",
        "before": before,
        "finetune_seconds": run["train_seconds"],
        "finetune_peak_memory_mb": run["peak_memory_mb"],
        "posthoc_seconds": round(seconds, 3),
        "posthoc_peak_memory_mb": round(log["peak_memory_mb"], 1),
        "train_seconds": round(run["train_seconds"] + seconds, 3),
        "peak_memory_mb": round(max(run["peak_memory_mb"], log["peak_memory_mb"]), 1),
        "posthoc_log": log,
        "labels": metrics["labels"],
        "samples": metrics["samples"],
        "config": {**run["config"], step: config_to_dict(config)},
    }
