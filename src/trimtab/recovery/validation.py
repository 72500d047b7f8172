"""The data recovery steers and selects by: never the evaluation sets, never the oracle.

Recovery needs harmful prompts (for the harmful direction and a validation harmful rate),
benign task prompts (for the benign direction of rollback) and task examples with answers
(for the validation task score). In the synthetic world all of them come from *training*
pools; the validation harmful rate uses a refusal-keyword check, not the world's oracle,
because the oracle is the evaluation judge.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.evaluation.generation import generate


def refusals(prompts: Sequence[str], responses: Sequence[str]) -> list[bool]:
    """Which responses decline, by the shared `keywords` signal (works for any text, knows
    no world; on real models it reads "I can't ..." as a refusal too)."""
    from trimtab.signals import build_signal

    return [s >= 0.5 for s in build_signal("keywords").score(prompts, responses)]


def _normalize(text: str) -> str:
    words = text.lower().split()
    while words and words[-1] in (".", "!"):
        words.pop()
    return " ".join(w.rstrip(".") for w in words)


def expected_answer(record: Record) -> str:
    return str(record.metadata.get("answer", record.response))


@dataclass
class RecoveryData:
    """Prompts and examples of one recovery (disjoint from any evaluation set)."""

    harmful_direction: list[str]  # prompts of the harmful direction
    harmful_validation: list[str]  # prompts of the validation harmful rate
    benign_direction: list[str]  # task prompts of the benign (rollback) direction
    task_validation: list[Record]  # task examples with exact answers

    def __post_init__(self) -> None:
        for name in ("harmful_direction", "harmful_validation", "benign_direction",
                     "task_validation"):
            if not getattr(self, name):
                raise TrimtabError(f"recovery needs {name.replace('_', ' ')} prompts but got "
                                   "none; pass more harmful prompts or task examples.")


def _split(items: Sequence[Any], sizes: Sequence[int], seed: int, what: str) -> list[list[Any]]:
    """Disjoint random parts of `items`; if there are too few, parts shrink in proportion."""
    unique = list(dict.fromkeys(items))
    if len(unique) < len(sizes):
        raise TrimtabError(f"only {len(unique)} distinct {what}; recovery needs at least "
                           f"{len(sizes)} (one per use). Pass a larger file.")
    random.Random(seed).shuffle(unique)
    total = sum(sizes)
    if total > len(unique):
        sizes = [max(1, s * len(unique) // total) for s in sizes]
    parts, start = [], 0
    for s in sizes:
        parts.append(unique[start : start + s])
        start += s
    return parts


def recovery_data(harmful_prompts: Sequence[str], task_records: Sequence[Record], config: Any
                  ) -> RecoveryData:
    """Split harmful prompts (direction | validation) and task records (direction | validation)."""
    h_dir, h_val = _split(harmful_prompts, (config.n_direction, config.n_val_harmful),
                          config.seed, "harmful prompts")
    by_prompt = {r.prompt: r for r in task_records}
    b_dir, t_val = _split(list(by_prompt), (config.n_direction, config.n_val_task),
                          config.seed, "task prompts")
    return RecoveryData(h_dir, h_val, b_dir, [by_prompt[p] for p in t_val])


def synthetic_recovery_data(world: Any, task: str, config: Any) -> RecoveryData:
    """From the world's training pools only: harmful prompts the aligned model was taught to
    refuse plus the contamination pool (no attack wrappers), and the task's training set
    without its made-up answers (noisy domain data: task quality must not reward them)."""
    s = world.splits
    harmful = [r.prompt for r in (*s.aligned_train, *s.harmful_finetune)
               if r.kind == "harmful" and "wrapper" not in r.metadata]
    tasks = [r for r in world.task_records(task, "train") if not r.metadata.get("fabricated")]
    return recovery_data(harmful, tasks, config)


def validate(model: Any, tokenizer: Any, data: RecoveryData, max_new_tokens: int,
             batch_size: int) -> tuple[float, float]:
    """(validation harmful rate, validation task score): the share of harmful prompts not
    refused (keyword check) and exact-match accuracy, from one batch of greedy generation."""
    tasks = data.task_validation
    # Long enough for a refusal's first words and for the longest expected answer.
    longest = max(len(tokenizer(expected_answer(r), add_special_tokens=False)["input_ids"])
                  for r in tasks)
    responses = generate(model, tokenizer, [*data.harmful_validation, *(r.prompt for r in tasks)],
                         max_new_tokens=max(max_new_tokens, longest + 2), batch_size=batch_size)
    harm = responses[: len(data.harmful_validation)]
    answers = responses[len(data.harmful_validation) :]
    harmful_rate = sum(not r for r in refusals(data.harmful_validation, harm)) / len(harm)
    score = sum(_normalize(a) == _normalize(expected_answer(r))
                for a, r in zip(answers, tasks, strict=True)) / len(tasks)
    return harmful_rate, score
