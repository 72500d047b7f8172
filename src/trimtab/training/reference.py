"""The frozen reference: a separate eval-mode copy, or the PEFT policy with its adapter disabled.

With a PEFT adapter the reference is the very same weights with the adapter switched off,
so no second copy of the model is held in memory (as in TRL).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def _unwrap(model: Any) -> Any:
    """The model under DDP/FSDP/compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(_unwrap(model), PeftModel)


class Reference:
    """Returns the reference model's logits for a batch, without gradients."""

    def __init__(self, policy: Any, frozen: Any | None = None) -> None:
        self.policy = policy
        self.frozen = frozen
        if frozen is None and not is_peft_model(policy):
            raise ValueError(
                "a reference needs either a frozen model or a PEFT policy whose adapter can be "
                "disabled"
            )
        if frozen is not None:
            frozen.eval()
            frozen.requires_grad_(False)

    @property
    def shares_weights(self) -> bool:
        return self.frozen is None

    def model_context(self) -> tuple[Any, contextlib.AbstractContextManager]:
        if self.frozen is not None:
            return self.frozen, contextlib.nullcontext()
        peft_model = _unwrap(self.policy)
        return peft_model, peft_model.disable_adapter()

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        model, ctx = self.model_context()
        was_training = model.training
        model.eval()  # dropout off: the reference is deterministic
        try:
            with ctx:
                return model(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).logits
        finally:
            model.train(was_training)
