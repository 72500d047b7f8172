"""`kl`: SFT plus a constant-strength KL(ref || policy) on response tokens (constrained SFT).

The KL is the forward, reference-weighted one over the full vocabulary, averaged over response
tokens: it pulls the policy back wherever the aligned reference puts mass, which is what keeps
refusals alive while the task is learned. Its strength is constant; `risk-kl` makes it adaptive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trimtab.config import CheckedConfig, option
from trimtab.objectives.base import (
    Objective,
    ObjectiveOutput,
    ResponseLogits,
    forward_kl,
    forward_logits,
    select_response,
    token_nll,
)


@dataclass
class KLConfig(CheckedConfig):
    beta: float = option(0.1, "weight of KL(ref || policy) added to the NLL", min=0.0)


class KLObjective(Objective):
    name = "kl"
    config_class = KLConfig
    needs_reference = True
    summary = "SFT + constant beta * KL(ref || policy) on response tokens (baseline)"

    def compute(self, policy, batch, reference) -> ObjectiveOutput:
        resp = select_response(forward_logits(policy, batch), batch["labels"])
        nll = token_nll(resp).mean()
        term, metrics = self.penalty(resp, batch, reference)
        return ObjectiveOutput(nll + term, {"nll": nll.item(), **metrics}, resp)

    def penalty(self, resp: ResponseLogits, batch, reference) -> tuple[torch.Tensor, dict]:
        """beta * KL(ref || policy) over the response tokens of `resp`."""
        ref = select_response(reference.logits(batch), batch["labels"])
        kl = forward_kl(ref.logits, resp.logits).mean()
        return self.config.beta * kl, {"kl": kl.item()}
