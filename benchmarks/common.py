"""What every benchmark script records beside its numbers (run as `python benchmarks/X.py`)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """The machine and torch build the numbers were taken on."""
    return {"platform": platform.platform(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def drop_samples(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the sample responses, which would bloat committed results."""
    return {k: v for k, v in metrics.items() if k != "samples"}
