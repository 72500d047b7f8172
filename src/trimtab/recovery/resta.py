"""`resta`: add the safety vector back by task arithmetic (the restoring baseline).

The safety vector is what alignment changed, aligned - unaligned; adding it (scaled) to the
fine-tuned weights is the baseline post-hoc fix that `recover` is compared with. It touches
every weight, so its fraction changed is 1.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from trimtab.recovery.config import RestaConfig


@torch.no_grad()
def resta_model(model: Any, aligned: Any, base: Any, config: RestaConfig | None = None
                ) -> dict[str, Any]:
    """In place: w <- w_ft + scale * (w_aligned - w_base) for every weight. Returns a log."""
    config = config or RestaConfig()
    started = time.perf_counter()
    a, b = dict(aligned.named_parameters()), dict(base.named_parameters())
    norm_ft, norm_vec = 0.0, 0.0
    for name, p in model.named_parameters():
        vector = a[name].to(p.dtype) - b[name].to(p.dtype)
        norm_ft += float(p.float().pow(2).sum())
        norm_vec += float(vector.float().pow(2).sum())
        p.add_(vector, alpha=config.scale)
    return {"scale": config.scale,
            "safety_vector_norm": norm_vec ** 0.5,
            "finetuned_norm": norm_ft ** 0.5,
            "fraction_changed": 1.0,
            "seconds": time.perf_counter() - started}
