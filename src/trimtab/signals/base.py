"""The alignment-signal protocol: how any judge scores (prompt, response) pairs in [0, 1].

A signal is what a method *trains on* (the `gated` objective's feedback, the `risk-kl`
critic). Any signal can also serve as an evaluation judge, but never the same one a method
trains on in the same run: a method could otherwise look safe by gaming its own judge.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from trimtab.errors import TrimtabError

# Why a response scored as it did, where the signal knows it.
REASONS = ("harmful", "hallucination", "refusal", "ok")
# A training signal that judges at least this share of the training targets misaligned is
# either looking at harmful data or cannot judge these answers; a method warns.
MOSTLY_MISALIGNED = 0.5
log = logging.getLogger(__name__)


def warn_if_mostly_misaligned(share: float, method: str, consequence: str) -> None:
    """Warn when a method's training signal calls most training targets misaligned: right for
    harmful-only data, but what a judge that cannot judge these answers also does (the keyword
    signal calls every answer without a refusal phrase harmful), and the method would then
    train the task away quietly."""
    if share >= MOSTLY_MISALIGNED:
        log.warning(
            "%s: the training signal judges %.0f%% of the training targets misaligned; %s. If "
            "this data is not mostly harmful, the signal cannot judge these answers (keywords "
            "calls any answer without a refusal phrase harmful): train on one that judges "
            "answers (classifier, hf:PATH, guard:PATH, http:URL, embedding:DIR).",
            method, 100 * share, consequence)


@dataclass(frozen=True)
class Verdict:
    """One judged response: `score` in [0, 1] (1 = aligned) and, where known, `reason`.

    A signal configured to tolerate failures may return an *unscored* verdict (score NaN,
    `scored` False); `AlignmentSignal.score` and `check_verdicts` reject those unless asked not
    to, so a failure never turns silently into a number.
    """

    score: float
    reason: str | None = None

    @property
    def scored(self) -> bool:
        return math.isfinite(self.score)


UNSCORED = Verdict(float("nan"), None)


def check_verdicts(verdicts: Sequence[Verdict], n: int, source: str, *,
                   allow_unscored: bool = False) -> list[Verdict]:
    """`verdicts` if they are `n` valid verdicts, else a TrimtabError naming `source`."""
    verdicts = list(verdicts)
    if len(verdicts) != n:
        raise TrimtabError(
            f"the alignment signal {source} returned {len(verdicts)} verdicts for {n} "
            "(prompt, response) pairs; a signal must return exactly one per pair."
        )
    for i, v in enumerate(verdicts):
        if not isinstance(v, Verdict):
            raise TrimtabError(f"the alignment signal {source} returned {v!r} at position {i}; "
                               "return trimtab.signals.Verdict objects.")
        if not v.scored:
            if allow_unscored:
                continue
            raise TrimtabError(
                f"the alignment signal {source} gave no valid score for pair {i} "
                f"({v.score!r}); fix the signal, or allow unscored samples where supported."
            )
        if not 0.0 <= v.score <= 1.0:
            raise TrimtabError(
                f"the alignment signal {source} scored pair {i} {v.score!r}, outside [0, 1]; "
                "scores must be in [0, 1] (1 = aligned)."
            )
        if v.reason is not None and v.reason not in REASONS:
            raise TrimtabError(f"the alignment signal {source} gave reason {v.reason!r}; use "
                               f"one of {', '.join(REASONS)} or None.")
    return verdicts


class AlignmentSignal(ABC):
    """Scores responses to prompts; subclasses implement `judge`."""

    name: ClassVar[str]

    @property
    def leaves_unscored(self) -> bool:
        """True when this signal is configured to leave failed pairs unscored (NaN) rather
        than raise; a consumer accepts NaN verdicts only from such a signal."""
        return getattr(getattr(self, "config", None), "on_failure", "raise") == "unscored"

    @abstractmethod
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        """One verdict per (prompt, response) pair, in order."""

    def verdicts(self, prompts: Sequence[str], responses: Sequence[str], *,
                 allow_unscored: bool = False) -> list[Verdict]:
        """`judge`, with the lengths and every verdict checked (see `check_verdicts`)."""
        if len(prompts) != len(responses):
            raise TrimtabError(f"{len(prompts)} prompts but {len(responses)} responses; "
                               "pass one response per prompt.")
        if not prompts:
            return []
        return check_verdicts(self.judge(list(prompts), list(responses)), len(prompts),
                              repr(self.name), allow_unscored=allow_unscored)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Alignment in [0, 1] per pair (1 = aligned); invalid scores raise TrimtabError."""
        return [v.score for v in self.verdicts(prompts, responses)]
