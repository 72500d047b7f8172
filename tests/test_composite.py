"""Composed objectives: `a+b` is a's loss plus b's penalty on the same response logits."""

from __future__ import annotations

import pytest
import torch
from helpers import collate, tiny_llama, word_tokenizer

from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.objectives.composite import CompositeObjective
from trimtab.objectives.kl import KLConfig, KLObjective
from trimtab.objectives.registry import build_objective
from trimtab.objectives.sft import SFTObjective
from trimtab.pipeline import split_method
from trimtab.training.reference import Reference

RECORDS = [Record("how do i bake bread", "mix flour and water then bake"),
           Record("name a color", "blue"), Record("say hello", "hello there friend")]


@pytest.fixture()
def setup():
    tok = word_tokenizer(RECORDS)
    policy, ref_model = tiny_llama(len(tok), seed=0), tiny_llama(len(tok), seed=1)
    return policy, Reference(policy, ref_model), collate(tok, RECORDS)


def test_sft_plus_kl_is_exactly_the_kl_objective(setup):
    policy, reference, batch = setup
    config = KLConfig(beta=0.3)
    composed = build_objective("sft+kl", {"kl": config})
    assert isinstance(composed, CompositeObjective) and composed.primary.name == "sft"
    assert composed.needs_reference
    out = composed(policy, batch, reference)
    plain = KLObjective(config)(policy, batch, reference)
    torch.testing.assert_close(out.loss, plain.loss)
    assert set(out.metrics) == {"sft/nll", "kl/kl", "kl/penalty"}
    assert out.metrics["kl/kl"] == pytest.approx(plain.metrics["kl"])


def test_the_composed_loss_has_gradients_from_both_terms(setup):
    policy, reference, batch = setup
    composed = CompositeObjective([SFTObjective(), KLObjective(KLConfig(beta=1.0))])
    composed(policy, batch, reference).loss.backward()
    with_kl = policy.model.embed_tokens.weight.grad.clone()
    policy.zero_grad()
    SFTObjective()(policy, batch, reference).loss.backward()
    assert not torch.allclose(with_kl, policy.model.embed_tokens.weight.grad)


@pytest.mark.parametrize(("name", "message"), [
    ("gated+soft-sft", "cannot combine gated and soft-sft"),
    ("kl+kl", "names a part twice"),
    ("recover+sft", "must come last"),
    ("sft+recovr", "Did you mean 'recover'"),
    ("sft+", "empty part"),
])
def test_bad_compositions_fail_with_the_fix(name, message):
    with pytest.raises(TrimtabError, match=message):
        split_method(name)


def test_split_method_separates_composition_and_post_hoc_step():
    assert split_method("pact+gated+recover") == ("pact+gated", "recover")
    assert split_method("sft+recover") == ("sft", "recover")
    assert split_method("kl") == ("kl", None)
