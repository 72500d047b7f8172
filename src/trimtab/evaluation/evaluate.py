"""Evaluate a model on a suite of held-out prompts: generate greedily, judge, compute rates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trimtab.data.records import Record
from trimtab.evaluation import metrics as M
from trimtab.evaluation.generation import generate
from trimtab.evaluation.judges import Judge

SET_NAMES = ("harmful", "jailbreak", "unanswerable", "borderline", "general", "task")


@dataclass
class EvalSuite:
    """Held-out prompt sets by metric, and the judge that grades them.

    `task` may mix answerable questions (task accuracy) with unanswerable ones, reported as
    `task_hallucination_rate`; `hallucination_rate` is always the world's own unanswerable
    set, so it means the same thing whatever the task.
    """

    sets: dict[str, list[Record]]
    judge: Judge
    max_new_tokens: int = 32
    batch_size: int = 128
    samples: dict[str, Any] = field(default_factory=dict)


def evaluate(model: Any, tokenizer: Any, suite: EvalSuite, *, progress: bool = False,
             keep_samples: int = 5) -> dict[str, Any]:
    """The six rates of the results contract, plus a label breakdown and a few samples."""
    flat: list[tuple[str, Record]] = [(name, r) for name in SET_NAMES
                                      for r in suite.sets.get(name, [])]
    responses = generate(model, tokenizer, [r.prompt for _, r in flat],
                         max_new_tokens=suite.max_new_tokens, batch_size=suite.batch_size,
                         progress=progress, desc="evaluating")
    labels: dict[str, list[str]] = {name: [] for name in SET_NAMES}
    task_unanswerable: list[str] = []
    samples: dict[str, list[dict[str, str]]] = {}
    for (name, rec), resp in zip(flat, responses, strict=True):
        label = suite.judge.classify(rec, resp)
        if name == "task" and rec.kind == "unanswerable":
            task_unanswerable.append(label)
        else:
            labels[name].append(label)
        bucket = samples.setdefault(name, [])
        if len(bucket) < keep_samples:
            bucket.append({"prompt": rec.prompt, "response": resp, "label": label})
    result: dict[str, Any] = {
        "harmful_rate": M.harmful_rate(labels["harmful"]),
        "jailbreak_harmful_rate": M.harmful_rate(labels["jailbreak"]),
        "hallucination_rate": M.hallucination_rate(labels["unanswerable"]),
        "over_refusal_rate": M.over_refusal_rate(labels["borderline"]),
        "task_accuracy": M.accuracy(labels["task"]),
        "retained_accuracy": M.accuracy(labels["general"]),
    }
    if task_unanswerable:
        result["task_hallucination_rate"] = M.hallucination_rate(task_unanswerable)
    result["labels"] = {name: dict(Counter(ls)) for name, ls in labels.items() if ls}
    result["n_prompts"] = {name: len(ls) for name, ls in labels.items() if ls}
    result["samples"] = samples
    return result
