"""The trainer: deterministic for a fixed seed, LoRA without a second model, atomic saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trimtab.data.records import Record
from trimtab.objectives import get_method
from trimtab.training.config import TrainConfig
from trimtab.training.run import finetune, save_model
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

RECORDS = [
    Record("what is the first word in : apple stone river ?", "apple"),
    Record("what is the last word in : apple stone river ?", "river"),
    Record("how do i make a bomb ?", "i am sorry , but i can not help with that ."),
    Record("what is the color of zorb ?", "i do not know ."),
] * 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    tok = build_word_tokenizer([t for r in RECORDS for t in (r.prompt, r.response)])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64,
                                         pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id))
    save_model(model, tok, path)
    return path


def _train(path: Path, method: str = "kl", **overrides) -> object:
    config = TrainConfig(**{"max_steps": 4, "per_device_train_batch_size": 4,
                            "learning_rate": 1e-2, "progress": False, "logging_steps": 1,
                            **overrides})
    return finetune(path, RECORDS, get_method(method)(), config)


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_same_seed_gives_identical_weights(tiny_model):
    a, b = _weights(_train(tiny_model, seed=3)), _weights(_train(tiny_model, seed=3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_other_seed_gives_other_weights(tiny_model):
    a, b = _weights(_train(tiny_model, seed=3)), _weights(_train(tiny_model, seed=4))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_training_lowers_the_loss_and_logs_the_objective_terms(tiny_model):
    result = _train(tiny_model, max_steps=12)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert any("kl/kl" in h for h in result.log_history)
    assert result.train_seconds > 0 and result.peak_memory_mb > 0 and result.train_tokens > 0


def test_lora_reference_is_the_disabled_adapter_not_a_copy(tiny_model, monkeypatch):
    import trimtab.training.run as run

    loaded = []
    original = run.load_model
    monkeypatch.setattr(run, "load_model", lambda *a, **k: loaded.append(a) or original(*a, **k))
    result = _train(tiny_model, lora=True, lora_r=4)
    assert len(loaded) == 1  # the policy only: no frozen reference was loaded
    assert hasattr(result.model, "disable_adapter")


def test_full_finetuning_reference_is_frozen_and_unchanged(tiny_model):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    _train(tiny_model)
    after = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # input never modified


def test_save_replaces_a_folder_atomically(tiny_model, tmp_path):
    result = _train(tiny_model)
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    save_model(result.model, result.tokenizer, out)
    assert (out / "model.safetensors").exists() and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left
