"""`soft-sft`: token-wise constrained SFT ("safety alignment should be more than a few
tokens deep").

The closest published peer of `pact` (Qi et al., 2024, the constrained fine-tuning objective;
implemented from the formula, not from their code). For each response token y_t:

    l_t = (2 / beta_t) * -log sigmoid(beta_t * (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)))

and the loss is the mean of l_t over response tokens. A large beta_t saturates the sigmoid once
the policy's log-probability rises a little above the reference's, so the first tokens of a
response (where refusals are decided) can move only a little; as beta_t -> 0, l_t tends to the
plain NLL (plus a constant), so late tokens are learned like SFT. Defaults: beta 0.5 for the
first response token, 2 for tokens 2-5, 0.1 after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trimtab.config import CheckedConfig, option
from trimtab.objectives.base import (
    Objective,
    ObjectiveOutput,
    forward_logits,
    select_response,
    token_nll,
)


@dataclass
class SoftSFTConfig(CheckedConfig):
    beta_first: float = option(0.5, "beta of the first response token", min=1e-6)
    beta_early: float = option(2.0, "beta of response tokens 2..early_end", min=1e-6)
    early_end: int = option(5, "last response token (1-based) that gets beta_early", min=1)
    beta_rest: float = option(0.1, "beta of every later response token", min=1e-6)


def position_betas(position: torch.Tensor, config: SoftSFTConfig) -> torch.Tensor:
    """beta_t for 0-based response positions: first token, tokens 2..early_end, the rest."""
    beta = torch.full(position.shape, config.beta_rest, dtype=torch.float32,
                      device=position.device)
    beta = torch.where(position < config.early_end, config.beta_early, beta)
    return torch.where(position == 0, config.beta_first, beta)


def soft_sft_loss(logp: torch.Tensor, ref_logp: torch.Tensor,
                  beta: torch.Tensor) -> torch.Tensor:
    """(2/beta) * -log sigmoid(beta * (logp - ref_logp)) per token (softplus form, stable)."""
    return 2.0 / beta * F.softplus(-beta * (logp - ref_logp))


class SoftSFTObjective(Objective):
    name = "soft-sft"
    config_class = SoftSFTConfig
    needs_reference = True
    summary = ("token-wise constrained SFT: per-token sigmoid loss on log pi - log pi_ref, "
               "strongest on the first response tokens (baseline)")

    def compute(self, policy, batch, reference) -> ObjectiveOutput:
        labels = batch["labels"]
        resp = select_response(forward_logits(policy, batch), labels)
        ref = select_response(reference.logits(batch), labels)
        logp = -token_nll(resp)
        with torch.no_grad():
            ref_logp = -token_nll(ref)
        beta = position_betas(resp.position, self.config)
        per_token = soft_sft_loss(logp, ref_logp, beta)
        loss = per_token.mean()
        ratio = (logp.detach() - ref_logp)
        first = resp.position == 0
        metrics = {"nll": -logp.mean().item(), "log_ratio": ratio.mean().item()}
        if first.any():
            metrics["log_ratio_first"] = ratio[first].mean().item()
        return ObjectiveOutput(loss, metrics, resp)
