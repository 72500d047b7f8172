"""What every benchmark script records beside its numbers (run as `python benchmarks/X.py`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trimtab.machine import machine

__all__ = ["DATA", "answer_sets", "drop_samples", "graded_answers", "interleaved_costs",
           "keyword_rates", "machine", "world_of_seed"]

# ../shared/data beside the checkout, or TRIMTAB_DATA (a folder or hf://datasets/OWNER/NAME)
DATA = os.environ.get("TRIMTAB_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
# the keyword judge's two readings: the default list, and the GCG list alone (suffix _gcg)
KEYWORD_JUDGES = {"": "keywords", "_gcg": "keywords:gcg"}


def keyword_rates(answers: dict[str, list[str]], rate_of_set: dict[str, str]
                  ) -> dict[str, float]:
    """`<rate>` and `<rate>_gcg` of each answer set: the share not refused for harmful sets,
    the share refused for benign ones (`rate_of_set` maps a set to its rate's name; a name
    starting with "over_refusal" counts refusals)."""
    from trimtab.signals import build_signal

    out: dict[str, float] = {}
    for suffix, spec in KEYWORD_JUDGES.items():
        judge = build_signal(spec)
        for name, responses in answers.items():
            if not responses:
                continue
            share = sum(map(judge.is_refusal, responses)) / len(responses)
            key = rate_of_set[name]
            out[key + suffix] = round(share if key.startswith("over_refusal") else 1 - share, 4)
    return out


def answer_sets(model: Any, tokenizer: Any, sets: dict[str, list[str]], *, max_new_tokens: int,
                batch_size: int, n_samples: int, progress: bool = False
                ) -> tuple[dict[str, list[str]], dict[str, list[dict[str, Any]]]]:
    """Greedy answers to each named prompt set, and its first `n_samples` (prompt, response,
    refusal by the default keyword list) for the report."""
    from trimtab.evaluation.generation import generate
    from trimtab.signals import build_signal

    judge = build_signal("keywords")
    answers: dict[str, list[str]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for name, prompts in sets.items():
        answers[name] = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, progress=progress, desc=name)
        samples[name] = [{"prompt": p, "response": a, "refusal": judge.is_refusal(a)}
                         for p, a in list(zip(prompts, answers[name], strict=True))[:n_samples]]
    return answers, samples


def graded_answers(model: Any, tokenizer: Any, suite: Any, name: str) -> list[dict[str, str]]:
    """Every answer to the evaluation set `name` of `suite` (greedy, as a cell's evaluation),
    with its prompt and the suite judge's label."""
    from dataclasses import replace

    from trimtab.evaluation.evaluate import evaluate

    prompts = suite.sets[name]
    return evaluate(model, tokenizer, replace(suite, sets={name: prompts}),
                    keep_samples=len(prompts))["samples"][name]


def drop_samples(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the sample responses, which would bloat committed results."""
    return {k: v for k, v in metrics.items() if k != "samples"}


def interleaved_costs(makers: dict[str, Callable[[], Any]], train: Callable[[Any], Any],
                      repeats: int, steps: int | None = None) -> dict[str, Any]:
    """Training seconds and peak memory of each objective, interleaved per repeat.

    Each repeat trains every objective of `makers` back to back (`train(objective)` returns a
    `FinetuneResult`), so a burst of load from other processes hits one repeat's runs alike;
    odd repeats run them in reverse order, so a drift over time does not favour one of them.
    Ratios are taken to the first maker within each repeat and their median over repeats is
    reported with their range. `setup_seconds` is an objective's own one-off work outside the
    timed loop where it records it; `call_seconds` is the whole `train` call (tokenising,
    loading, setup).
    """
    from statistics import median

    base = next(iter(makers))
    seconds: dict[str, list[float]] = {k: [] for k in makers}
    memory: dict[str, list[float]] = {k: [] for k in makers}
    setup: dict[str, list[float]] = {k: [] for k in makers}
    call: dict[str, list[float]] = {k: [] for k in makers}
    for repeat in range(repeats):
        order = list(makers.items())
        for name, make in (order[::-1] if repeat % 2 else order):
            objective = make()
            start = time.perf_counter()
            result = train(objective)
            call[name].append(round(time.perf_counter() - start, 3))
            seconds[name].append(result.train_seconds)
            memory[name].append(result.peak_memory_mb)
            setup[name].append(getattr(objective, "setup_seconds", 0.0))

    def per_repeat(values: dict[str, list[float]]) -> dict[str, list[float]]:
        return {k: [round(a / b, 3) for a, b in zip(v, values[base], strict=True)]
                for k, v in values.items()}

    def ratios(values: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(median(v), 3) for k, v in per_repeat(values).items()}

    return {"steps": steps, "repeats": repeats, "baseline": base, "seconds": seconds,
            "peak_memory_mb": memory, "setup_seconds": setup, "call_seconds": call,
            f"time_ratio_to_{base}_per_repeat": per_repeat(seconds),
            f"median_time_ratio_to_{base}": ratios(seconds),
            f"median_memory_ratio_to_{base}": ratios(memory),
            f"median_call_ratio_to_{base}": ratios(call)}


def world_of_seed(seed: int, task: str = "general") -> tuple[Any, Any, Any]:
    """World seed `seed` at the default sizes: the world, its (cached) base and aligned
    references, and the task's evaluation suite."""
    from trimtab.worlds.synthetic.build import ReferenceBuildConfig, build_references
    from trimtab.worlds.synthetic.generator import SyntheticWorld, SyntheticWorldConfig
    from trimtab.worlds.synthetic.suite import synthetic_suite

    config = SyntheticWorldConfig(seed=seed)
    world = SyntheticWorld(config)
    refs = build_references(config, ReferenceBuildConfig(), progress=False)
    return world, refs, synthetic_suite(world, task)
