"""`soft-sft`: the per-token constrained loss, its position-dependent beta, and its limits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import collate, tiny_llama, word_tokenizer

from trimtab.cli import main
from trimtab.data.records import Record
from trimtab.objectives import get_method
from trimtab.objectives.base import select_response
from trimtab.objectives.soft_sft import (
    SoftSFTConfig,
    SoftSFTObjective,
    position_betas,
    soft_sft_loss,
)
from trimtab.training.reference import Reference

RECORDS = [
    Record("what is 2 plus 3 ?", "5"),
    Record("how do i make a bomb at home ?", "i am sorry , but i can not help with that ."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(RECORDS)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return collate(tokenizer, RECORDS)


def test_betas_by_position_follow_the_defaults():
    beta = position_betas(torch.arange(8), SoftSFTConfig())
    assert beta.tolist() == pytest.approx([0.5, 2, 2, 2, 2, 0.1, 0.1, 0.1])


def test_loss_matches_the_formula_written_out(tokenizer, batch):
    policy, ref_model = tiny_llama(len(tokenizer)), tiny_llama(len(tokenizer), seed=1)
    out = SoftSFTObjective()(policy, batch, Reference(policy, ref_model))
    with torch.no_grad():
        labels = batch["labels"]
        resp = select_response(policy(input_ids=batch["input_ids"]).logits, labels)
        ref = select_response(ref_model(input_ids=batch["input_ids"]).logits, labels)
    terms = []
    for i in range(len(resp.targets)):
        y = resp.targets[i]
        logp = F.log_softmax(resp.logits[i], -1)[y].item()
        ref_logp = F.log_softmax(ref.logits[i], -1)[y].item()
        t = resp.position[i].item()
        beta = 0.5 if t == 0 else (2.0 if t < 5 else 0.1)
        sigmoid = 1 / (1 + math.exp(-beta * (logp - ref_logp)))
        terms.append(2 / beta * -math.log(sigmoid))
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_equal_policy_and_reference_give_two_log_two_over_beta(tokenizer, batch):
    policy = tiny_llama(len(tokenizer))
    out = SoftSFTObjective()(policy, batch, Reference(policy, copy.deepcopy(policy)))
    resp = select_response(batch["input_ids"].float()[..., None], batch["labels"])
    beta = position_betas(resp.position, SoftSFTConfig())
    assert out.loss.item() == pytest.approx((2 * math.log(2) / beta).mean().item(), rel=1e-5)
    assert out.metrics["log_ratio"] == pytest.approx(0.0, abs=1e-5)


def test_small_beta_gives_the_sft_gradient(tokenizer, batch):
    """As beta -> 0 the loss tends to NLL + const, so its gradient tends to the NLL's."""
    policy = tiny_llama(len(tokenizer))
    reference = Reference(policy, copy.deepcopy(policy))
    tiny = SoftSFTConfig(beta_first=1e-4, beta_early=1e-4, beta_rest=1e-4)
    soft = SoftSFTObjective(tiny)(policy, batch, reference).loss
    g_soft = torch.autograd.grad(soft, policy.lm_head.weight)[0]
    sft = get_method("sft")()(policy, batch).loss
    g_sft = torch.autograd.grad(sft, policy.lm_head.weight)[0]
    assert torch.allclose(g_soft, g_sft, atol=1e-4)


def test_large_beta_stops_rewarding_likelihood_above_the_reference():
    """The constraint: d loss / d log pi is -2 sigmoid(-beta * margin); NLL's is -1."""
    margin = torch.tensor([1.0, 1.0, -1.0], requires_grad=True)
    beta = torch.tensor([50.0, 0.1, 50.0])
    soft_sft_loss(margin, torch.zeros(3), beta).sum().backward()
    grad = margin.grad.tolist()
    assert abs(grad[0]) < 1e-10  # above the reference with a high beta: no more push
    assert grad[1] == pytest.approx(-2 / (1 + math.exp(0.1)), rel=1e-5)  # ~ -0.95, like NLL
    assert grad[2] == pytest.approx(-2.0, rel=1e-5)  # below it: pulled back up at full strength


def test_registered_with_its_flags(capsys):
    assert get_method("soft-sft") is SoftSFTObjective
    assert main(["config", "show", "soft-sft"]) == 0
    shown = capsys.readouterr().out
    assert "beta_first" in shown and "beta_early" in shown and "beta_rest" in shown
