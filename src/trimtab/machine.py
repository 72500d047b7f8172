"""The machine and torch build a number was measured on, recorded beside every benchmark."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or "unknown",
            "cpus": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
