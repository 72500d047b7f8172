"""`AlignmentTrainer`: a thin `transformers.Trainer` whose loss comes from a trimtab objective.

Everything else (optimiser, schedule, clipping, accelerate/DDP, checkpoints, logging) is the
Trainer's own, so `accelerate launch` works as for any HF training script.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer

from trimtab.errors import TrimtabError, raise_if_terminated
from trimtab.objectives.base import Objective
from trimtab.training.reference import Reference


class AlignmentTrainer(Trainer):
    """Runs any `Objective`; averages its diagnostics into the Trainer's logs."""

    def __init__(self, *args: Any, objective: Objective, reference: Reference | None = None,
                 on_nonfinite_loss: str = "error", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if objective.needs_reference and reference is None:
            raise ValueError(f"objective {objective.name!r} needs a reference model")
        self.objective = objective
        self.reference = reference
        # Objectives return a per-batch mean, so the Trainer must scale it for gradient
        # accumulation itself (as for models that do not take `num_items_in_batch`).
        self.model_accepts_loss_kwargs = False
        self._diagnostics: dict[str, list[float]] = defaultdict(list)
        self.on_nonfinite_loss = on_nonfinite_loss
        self.skipped_batches = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        raise_if_terminated()  # a SIGTERM whose exception a library's __del__ swallowed
        out = self.objective(model, inputs, self.reference)
        if not torch.isfinite(out.loss.detach()).all():
            out.loss = self._nonfinite(out.loss, out.metrics)
        for key, value in out.metrics.items():
            self._diagnostics[key].append(float(value))
        return (out.loss, None) if return_outputs else out.loss

    def _nonfinite(self, loss: torch.Tensor, terms: dict[str, float]) -> torch.Tensor:
        """A NaN/inf loss stops training with what is known of it, or skips the batch.

        On one process a skipped batch gets a zero loss with no path to the weights, so the
        optimiser step leaves them as they were. Under DDP every rank must still send its
        gradients to the all-reduce (else its peers wait for it, and the ranks' weights would
        drift apart), so the skipped batch sends zeros: the averaged step is the other ranks'
        gradients scaled by (n - 1) / n.
        The count is reported in the logs and the result.
        """
        step = self.state.global_step
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items()) or "no terms logged"
        if self.on_nonfinite_loss == "skip":
            self.skipped_batches += 1
            if self.accelerator.num_processes > 1:
                return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad),
                           torch.zeros((), device=loss.device))
            return torch.zeros((), device=loss.device, requires_grad=True)
        raise TrimtabError(
            f"the {self.objective.name} loss is {loss.item()} at step {step} ({shown}). "
            "Lower the learning rate, check the data, or set on_nonfinite_loss=skip to skip "
            "such batches."
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.skipped_batches:
            logs["skipped_nonfinite_batches"] = self.skipped_batches
        if "loss" in logs and self._diagnostics:
            for key, values in self._diagnostics.items():
                # a composed objective's keys already name their part (`pact/safety_kl`)
                name = key if "/" in key else f"{self.objective.name}/{key}"
                logs[name] = sum(values) / len(values)
            self._diagnostics.clear()
        super().log(logs, start_time)
