"""`AlignmentTrainer`: a thin `transformers.Trainer` whose loss comes from a trimtab objective.

Everything else (optimiser, schedule, clipping, accelerate/DDP, checkpoints, logging) is the
Trainer's own, so `accelerate launch` works as for any HF training script.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from transformers import Trainer

from trimtab.objectives.base import Objective
from trimtab.training.reference import Reference


class AlignmentTrainer(Trainer):
    """Runs any `Objective`; averages its diagnostics into the Trainer's logs."""

    def __init__(self, *args: Any, objective: Objective, reference: Reference | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if objective.needs_reference and reference is None:
            raise ValueError(f"objective {objective.name!r} needs a reference model")
        self.objective = objective
        self.reference = reference
        # Objectives return a per-batch mean, so the Trainer must scale it for gradient
        # accumulation itself (as for models that do not take `num_items_in_batch`).
        self.model_accepts_loss_kwargs = False
        self._diagnostics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self.objective(model, inputs, self.reference)
        for key, value in out.metrics.items():
            self._diagnostics[key].append(float(value))
        return (out.loss, None) if return_outputs else out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._diagnostics:
            for key, values in self._diagnostics.items():
                logs[f"{self.objective.name}/{key}"] = sum(values) / len(values)
            self._diagnostics.clear()
        super().log(logs, start_time)
