"""What every benchmark script records beside its numbers (run as `python benchmarks/X.py`)."""

from __future__ import annotations

from typing import Any

from trimtab.machine import machine

__all__ = ["drop_samples", "machine"]


def drop_samples(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the sample responses, which would bloat committed results."""
    return {k: v for k, v in metrics.items() if k != "samples"}
