"""`sft`: plain supervised fine-tuning, the mean NLL of response tokens. The baseline."""

from __future__ import annotations

from dataclasses import dataclass

from trimtab.config import CheckedConfig
from trimtab.objectives.base import (
    Objective,
    ObjectiveOutput,
    forward_logits,
    select_response,
    token_nll,
)


@dataclass
class SFTConfig(CheckedConfig):
    """`sft` has no knobs of its own; training hyper-parameters live in `TrainConfig`."""


class SFTObjective(Objective):
    name = "sft"
    config_class = SFTConfig
    summary = "plain supervised fine-tuning on response tokens (baseline)"

    def compute(self, policy, batch, reference=None) -> ObjectiveOutput:
        resp = select_response(forward_logits(policy, batch), batch["labels"])
        nll = token_nll(resp).mean()
        return ObjectiveOutput(nll, {"nll": nll.item()}, resp)
