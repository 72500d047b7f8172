"""Mixing a fraction of other records (harmful, or refusals) into a task set."""

from __future__ import annotations

import random
from collections.abc import Sequence

from trimtab.data.records import Record
from trimtab.errors import TrimtabError


def n_to_mix(n_task: int, fraction: float) -> int:
    """How many extra records make `fraction` of the mixed set: round(f / (1 - f) * n)."""
    if not 0.0 <= fraction < 1.0:
        raise TrimtabError(
            f"a mixing fraction must be in [0, 1) (got {fraction}); for a set made only of "
            "harmful data use the adversarial scenario."
        )
    return round(fraction / (1.0 - fraction) * n_task)


def mix(task: Sequence[Record], extra: Sequence[Record], fraction: float,
        seed: int = 0) -> list[Record]:
    """`task` plus enough of `extra` to make `fraction` of the result, shuffled.

    Extra records are drawn without replacement while the pool lasts, then cycled, so a small
    harmful pool still gives the asked fraction (as in the contamination attacks it models).
    """
    n = n_to_mix(len(task), fraction)
    if n and not extra:
        raise TrimtabError(f"asked to mix a fraction {fraction} but the pool to mix from is empty.")
    rng = random.Random(seed)
    pool = list(extra)
    chosen: list[Record] = []
    while len(chosen) < n:
        rng.shuffle(pool)
        chosen.extend(pool[: n - len(chosen)])
    mixed = [*task, *chosen]
    rng.shuffle(mixed)
    return mixed
