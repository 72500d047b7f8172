"""The alignment-signal protocol: how any judge scores (prompt, response) pairs in [0, 1].

A signal is what a method *trains on* (the `gated` objective's feedback, the `risk-kl`
critic). Any signal can also serve as an evaluation judge, but never the same one a method
trains on in the same run: a method could otherwise look safe by gaming its own judge.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

# Why a response scored as it did, where the signal knows it.
REASONS = ("harmful", "hallucination", "refusal", "ok")


@dataclass(frozen=True)
class Verdict:
    """One judged response: `score` in [0, 1] (1 = aligned) and, where known, `reason`."""

    score: float
    reason: str | None = None


class AlignmentSignal(ABC):
    """Scores responses to prompts; subclasses implement `judge`."""

    name: ClassVar[str]

    @abstractmethod
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        """One verdict per (prompt, response) pair, in order."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Alignment in [0, 1] per pair (1 = aligned)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [v.score for v in self.judge(prompts, responses)]
