"""Objectives (sft, kl), the frozen reference and the metric arithmetic, on a tiny random Llama."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import collate, tiny_llama, word_tokenizer

from trimtab.data.formatting import IGNORE_INDEX
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.evaluation import metrics
from trimtab.objectives import get_method
from trimtab.objectives.base import forward_kl, select_response
from trimtab.objectives.kl import KLConfig, KLObjective
from trimtab.objectives.sft import SFTObjective
from trimtab.training.reference import Reference

RECORDS = [
    Record("what is 2 plus 3 ?", "5"),
    Record("what is the first word in : apple stone river ?", "apple"),
    Record("how do i make a bomb at home ?", "i am sorry , but i can not help with that ."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(RECORDS)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return collate(tokenizer, RECORDS)


@pytest.fixture
def policy(tokenizer):
    return tiny_llama(len(tokenizer))


def perturb(model: torch.nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---------------------------------------------------------------- sft and kl


def test_sft_loss_is_cross_entropy_over_response_tokens(policy, batch):
    logits = logits_of(policy, batch)
    vocab = logits.shape[-1]
    by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch["labels"][:, 1:].reshape(-1),
                              ignore_index=IGNORE_INDEX)
    out = SFTObjective()(policy, batch)
    assert torch.allclose(out.loss, by_hand, atol=1e-5)
    assert out.metrics["nll"] == pytest.approx(by_hand.item(), abs=1e-5)


def test_kl_with_beta_zero_equals_sft(policy, batch):
    reference = Reference(policy, frozen=tiny_llama(policy.config.vocab_size, seed=5))
    kl_loss = KLObjective(KLConfig(beta=0.0))(policy, batch, reference).loss
    assert torch.allclose(kl_loss, SFTObjective()(policy, batch).loss, atol=1e-6)


def test_kl_term_is_zero_against_own_copy_and_positive_after_perturbing(policy, batch):
    reference = Reference(policy, frozen=copy.deepcopy(policy))
    objective = KLObjective(KLConfig(beta=1.0))
    assert objective(policy, batch, reference).metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    perturb(policy)
    out = objective(policy, batch, reference)
    assert out.metrics["kl"] > 1e-3
    assert out.loss.item() == pytest.approx(out.metrics["nll"] + out.metrics["kl"], rel=1e-5)


def test_gradients_reach_the_policy_but_not_the_frozen_reference(policy, batch):
    frozen = copy.deepcopy(policy)
    reference = Reference(policy, frozen=frozen)
    perturb(policy)
    KLObjective(KLConfig(beta=1.0))(policy, batch, reference).loss.backward()
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())


def test_reference_without_frozen_model_or_peft_policy_raises(policy):
    with pytest.raises(ValueError, match="PEFT"):
        Reference(policy)


def test_peft_reference_shares_weights_and_returns_base_logits(policy, batch):
    from peft import LoraConfig, get_peft_model

    base_logits = logits_of(policy, batch)
    peft_policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8,
                                                    target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA B starts at zero: make the adapter actually do something
        for name, p in peft_policy.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.5)
    reference = Reference(peft_policy)
    assert reference.shares_weights
    assert torch.allclose(reference.logits(batch), base_logits, atol=1e-5)
    assert not torch.allclose(logits_of(peft_policy, batch), base_logits, atol=1e-3)
    # the adapter is on again after the reference call
    assert not torch.allclose(logits_of(peft_policy, batch), reference.logits(batch), atol=1e-3)


def test_reference_logits_do_not_track_gradients_and_restore_train_mode(policy, batch):
    frozen = copy.deepcopy(policy)
    policy.train()
    reference = Reference(policy, frozen=frozen)
    assert not reference.logits(batch).requires_grad
    assert not frozen.training


# ---------------------------------------------------------------- token arithmetic


def test_select_response_counts_positions_from_zero_within_each_response():
    labels = torch.tensor([[-100, -100, 5, 6, 7],
                           [-100, 8, 9, -100, -100]])
    # logits[b, t] = 10 * b + t in every vocab slot, so the selected rows are identifiable
    logits = (10 * torch.arange(2)[:, None] + torch.arange(5)[None, :]).float()
    logits = logits[:, :, None].expand(2, 5, 3)
    resp = select_response(logits, labels)
    assert resp.targets.tolist() == [5, 6, 7, 8, 9]
    assert resp.position.tolist() == [0, 1, 2, 0, 1]
    assert resp.sample.tolist() == [0, 0, 0, 1, 1]
    assert resp.logits[:, 0].tolist() == [1, 2, 3, 10, 11]  # position t predicts label t+1


def test_forward_kl_matches_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    ref, pol = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
    p, q = ref.softmax(-1), pol.softmax(-1)
    direct = (p * (p.log() - q.log())).sum(-1)
    assert torch.allclose(forward_kl(ref, pol), direct, atol=1e-6)
    assert not torch.allclose(forward_kl(pol, ref), direct, atol=1e-3)  # direction matters
    assert torch.allclose(forward_kl(ref, ref), torch.zeros(4), atol=1e-6)


# ---------------------------------------------------------------- registry


def test_get_method_returns_registered_objectives():
    assert get_method("sft") is SFTObjective
    assert get_method("kl") is KLObjective
    assert get_method("kl").needs_reference and not get_method("sft").needs_reference


def test_get_method_typo_raises_suggesting_the_close_name():
    with pytest.raises(TrimtabError, match="Did you mean 'sft'"):
        get_method("sftt")


# ---------------------------------------------------------------- metrics


def test_metric_rates_from_hand_made_labels():
    assert metrics.harmful_rate(["harmful", "refusal", "wrong", "harmful"]) == 0.5
    assert metrics.hallucination_rate(["abstention", "refusal", "wrong", "correct"]) == 0.5
    assert metrics.over_refusal_rate(["refusal", "correct", "correct", "abstention"]) == 0.5
    assert metrics.accuracy(["correct", "wrong", "correct", "correct"]) == 0.75


@pytest.mark.parametrize("fn", [metrics.harmful_rate, metrics.hallucination_rate,
                                metrics.over_refusal_rate, metrics.accuracy])
def test_metric_rates_of_an_empty_set_are_zero(fn):
    assert fn([]) == 0.0
