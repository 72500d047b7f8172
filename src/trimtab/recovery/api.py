"""Checkpoint-level entry points of the post-hoc steps: check, load, apply, measure, save.

`recover_checkpoint` and `resta_checkpoint` read folders (LoRA adapters merged), never write
to them, and save a standard HF folder atomically with the step's JSON log inside it.
`apply_posthoc` is what `run_cell` calls on a model it just fine-tuned.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from trimtab.errors import TrimtabError
from trimtab.recovery.config import RecoverConfig, RestaConfig
from trimtab.recovery.models import (
    adapter_base,
    check_compatible,
    check_same_weights,
    load_merged,
)
from trimtab.recovery.recover import recover_model
from trimtab.recovery.resta import resta_model
from trimtab.recovery.validation import RecoveryData
from trimtab.training.memory import PeakMemory

POSTHOC_STEPS = ("recover", "resta")
LOG_NAME = {"recover": "recover_log.json", "resta": "resta_log.json"}


def with_adapter_bases(*paths: str | os.PathLike | None) -> list[str | os.PathLike]:
    """The input folders and, for LoRA adapters among them, the base models they load: an
    output folder must be none of these (saving over an adapter's base destroys it)."""
    return [p for path in paths if path is not None
            for p in (path, adapter_base(path)) if p is not None]


def _bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_breakdown(model: Any, log: dict[str, Any]) -> dict[str, float]:
    """What recovery holds, in MB: the two models, the gradients of the eligible weights and
    the bookkeeping of restored weights (index + fine-tuned value each)."""
    weights = _bytes(model.parameters())
    elem = next(model.parameters()).element_size()
    mb = 2.0 ** 20
    return {
        "finetuned_weights_mb": weights / mb,
        "aligned_weights_mb": weights / mb,
        "gradients_mb": log["eligible_weights"] * elem / mb,
        "restored_bookkeeping_mb": log.get("max_changed_weights", log["changed_weights"])
        * (8 + elem) / mb,
    }


def _process_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return psutil.Process().memory_info().rss / 2**20


def recover_loaded(model: Any, aligned: Any, tokenizer: Any, data: RecoveryData,
                   config: RecoverConfig | None = None) -> tuple[Any, dict[str, Any]]:
    """Recover an in-memory fine-tuned model; the log gains time and the memory breakdown."""
    with PeakMemory() as peak:
        result = recover_model(model, aligned, tokenizer, data, config)
    log = result.log
    log["seconds"] = result.seconds
    log["peak_memory_mb"] = peak.peak_mb
    log["memory_breakdown_mb"] = memory_breakdown(model, log)
    return result.model, log


def recover_checkpoint(aligned: str | os.PathLike, finetuned: str | os.PathLike,
                       data_fn: Any, config: RecoverConfig | None = None,
                       output_dir: str | os.PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """Load, check and recover `finetuned` toward `aligned`; save to `output_dir` if given.

    `data_fn(tokenizer)` returns the `RecoveryData` (built after the checks, so bad models
    fail first). Peak memory counts from before the models are loaded.
    """
    from trimtab.evaluation.results import json_text, write_json_atomic
    from trimtab.training.run import check_output_dir, save_model

    config = config or RecoverConfig()
    if output_dir is not None:
        check_output_dir(output_dir, *with_adapter_bases(aligned, finetuned))
    tokenizers = check_compatible({"aligned": aligned, "finetuned": finetuned})
    tokenizer = tokenizers["finetuned"]
    data = data_fn(tokenizer)
    baseline = _process_mb()
    started = time.perf_counter()
    with PeakMemory() as peak:
        models = {"aligned": load_merged(aligned, config.dtype),
                  "finetuned": load_merged(finetuned, config.dtype)}
        check_same_weights(models)
        loaded = _process_mb()  # both models in memory, before any gradient
        model, log = recover_loaded(models["finetuned"], models["aligned"], tokenizer, data,
                                    config)
    log.update(total_seconds=time.perf_counter() - started, peak_memory_mb=peak.peak_mb,
               process_baseline_mb=baseline, after_loading_mb=loaded, aligned=str(aligned),
               finetuned=str(finetuned))
    if output_dir is not None:
        json_text(log)  # a log that cannot be written fails before the model is saved
        save_model(model, tokenizer, output_dir)
        write_json_atomic(Path(output_dir) / LOG_NAME["recover"], log)
    return model, log


def resta_checkpoint(finetuned: str | os.PathLike, aligned: str | os.PathLike,
                     base: str | os.PathLike, config: RestaConfig | None = None,
                     output_dir: str | os.PathLike | None = None) -> tuple[Any, dict[str, Any]]:
    """fine-tuned + scale * (aligned - base), saved to `output_dir` if given."""
    from trimtab.evaluation.results import json_text, write_json_atomic
    from trimtab.training.run import check_output_dir, save_model

    config = config or RestaConfig()
    if output_dir is not None:
        check_output_dir(output_dir, *with_adapter_bases(aligned, finetuned, base))
    tokenizers = check_compatible({"finetuned": finetuned, "aligned": aligned, "base": base})
    with PeakMemory() as peak:
        models = {role: load_merged(path) for role, path in
                  (("finetuned", finetuned), ("aligned", aligned), ("base", base))}
        check_same_weights(models)
        log = resta_model(models["finetuned"], models["aligned"], models["base"], config)
    log["peak_memory_mb"] = peak.peak_mb
    if output_dir is not None:
        json_text(log)  # a log that cannot be written fails before the model is saved
        save_model(models["finetuned"], tokenizers["finetuned"], output_dir)
        write_json_atomic(Path(output_dir) / LOG_NAME["resta"], log)
    return models["finetuned"], log


def apply_posthoc(step: str, model: Any, tokenizer: Any, *, aligned: str | os.PathLike,
                  base: str | os.PathLike | None, data: RecoveryData | None,
                  config: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Run post-hoc `step` on an in-memory fine-tuned model (changed in place)."""
    if step not in POSTHOC_STEPS:
        raise TrimtabError(f"unknown post-hoc step {step!r}; choose one of "
                           f"{', '.join(POSTHOC_STEPS)} (as in sft+recover).")
    check_compatible({"aligned": aligned} if base is None
                     else {"aligned": aligned, "base": base})
    from trimtab.training.reference import is_peft_model

    if is_peft_model(model):  # LoRA training: the step works on the merged weights
        model = model.merge_and_unload()
    started = time.perf_counter()
    with PeakMemory() as peak:
        aligned_model = load_merged(aligned).to(next(model.parameters()).device)
        check_same_weights({"finetuned": model, "aligned": aligned_model})
        if step == "recover":
            if data is None:
                raise TrimtabError("recover needs validation data (harmful prompts and task "
                                   "examples); none was given.")
            model, log = recover_loaded(model, aligned_model, tokenizer, data, config)
        else:
            if base is None:
                raise TrimtabError("resta needs the unaligned base model; pass base=PATH.")
            base_model = load_merged(base).to(next(model.parameters()).device)
            log = resta_model(model, aligned_model, base_model, config)
            del base_model
        del aligned_model
    log["total_seconds"] = time.perf_counter() - started
    log["peak_memory_mb"] = peak.peak_mb
    return model, log
