"""What every benchmark script records beside its numbers (run as `python benchmarks/X.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from trimtab.machine import machine

__all__ = ["drop_samples", "interleaved_costs", "machine"]


def drop_samples(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the sample responses, which would bloat committed results."""
    return {k: v for k, v in metrics.items() if k != "samples"}


def interleaved_costs(makers: dict[str, Callable[[], Any]], train: Callable[[Any], Any],
                      repeats: int, steps: int | None = None) -> dict[str, Any]:
    """Training seconds and peak memory of each objective, interleaved per repeat.

    Each repeat trains every objective of `makers` back to back (`train(objective)` returns a
    `FinetuneResult`), so a burst of load from other processes hits one repeat's runs alike;
    ratios are taken to the first maker within each repeat and their median over repeats is
    reported. `setup_seconds` is an objective's own one-off work outside the timed loop where
    it records it; `call_seconds` is the whole `train` call (tokenising, loading, setup).
    """
    from statistics import median

    base = next(iter(makers))
    seconds: dict[str, list[float]] = {k: [] for k in makers}
    memory: dict[str, list[float]] = {k: [] for k in makers}
    setup: dict[str, list[float]] = {k: [] for k in makers}
    call: dict[str, list[float]] = {k: [] for k in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            objective = make()
            start = time.perf_counter()
            result = train(objective)
            call[name].append(round(time.perf_counter() - start, 3))
            seconds[name].append(result.train_seconds)
            memory[name].append(result.peak_memory_mb)
            setup[name].append(getattr(objective, "setup_seconds", 0.0))

    def ratios(values: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(median(a / b for a, b in zip(v, values[base], strict=True)), 3)
                for k, v in values.items()}

    return {"steps": steps, "repeats": repeats, "baseline": base, "seconds": seconds,
            "peak_memory_mb": memory, "setup_seconds": setup, "call_seconds": call,
            f"median_time_ratio_to_{base}": ratios(seconds),
            f"median_memory_ratio_to_{base}": ratios(memory),
            f"median_call_ratio_to_{base}": ratios(call)}
