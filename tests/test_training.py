"""The trainer: deterministic for a fixed seed, LoRA without a second model, atomic saves."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.objectives import get_method
from trimtab.objectives.sft import SFTObjective
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


def test_lora_with_another_reference_loads_that_reference(tiny_model, tmp_path, monkeypatch):
    """Unsafe initialisation under LoRA: start from one model, stay close to another. The
    disabled adapter would be the starting model, so the named reference is loaded."""
    import trimtab.training.run as run

    other = tmp_path / "other"
    torch.manual_seed(1)
    start = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = LlamaForCausalLM(start.config)
    save_model(model, run.load_tokenizer(tiny_model), other)
    made = []
    original = run.Reference
    monkeypatch.setattr(run, "Reference", lambda *a: made.append(original(*a)) or made[-1])
    config = TrainConfig(max_steps=1, per_device_train_batch_size=4, progress=False,
                         lora=True, lora_r=4)
    finetune(tiny_model, RECORDS, get_method("kl")(), config, reference_path=other)
    frozen = made[0].frozen
    assert frozen is not None and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.state_dict().items())
    made.clear()  # the same path spelled another way still shares the weights
    finetune(tiny_model, RECORDS, get_method("kl")(), config,
             reference_path=Path(str(tiny_model) + "/."))
    assert made[0].shares_weights


def test_full_finetuning_reference_stays_frozen_while_the_policy_moves(tiny_model, monkeypatch):
    import trimtab.training.run as run

    made = []
    original = run.Reference
    monkeypatch.setattr(run, "Reference", lambda *a: made.append(original(*a)) or made[-1])
    start = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    result = _train(tiny_model)
    frozen = made[0].frozen
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert all(torch.equal(v, start[k]) for k, v in frozen.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in result.model.state_dict().items())


def test_gradient_accumulation_matches_one_large_batch(tiny_model):
    """The loss of 2 accumulated micro-batches of 4 equals that of one batch of 8.

    (Compared on the logged loss: Adam's first step is sign-like, so weights are too
    sensitive to float noise to compare; an unscaled accumulation shows up as a 2x loss.)
    """
    records = [Record(f"what is the first word in : {w} stone river ?", w)
               for w in ("apple", "stone", "river", "zorb")] * 2
    losses = []
    for batch, accumulate in ((8, 1), (4, 2)):
        config = TrainConfig(max_steps=1, per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulate, progress=False,
                             logging_steps=1)
        result = finetune(tiny_model, records, get_method("sft")(), config)
        losses.append(next(h["loss"] for h in result.log_history if "loss" in h))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_output_dir_that_is_not_a_model_folder_is_refused(tiny_model, tmp_path):
    from trimtab.errors import TrimtabError

    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(TrimtabError, match="not a model folder"):
        finetune(tiny_model, RECORDS, get_method("sft")(),
                 TrainConfig(max_steps=1, progress=False), output_dir=precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"
    with pytest.raises(TrimtabError, match="input model"):
        finetune(tiny_model, RECORDS, get_method("sft")(),
                 TrainConfig(max_steps=1, progress=False), output_dir=tiny_model)


def test_save_replaces_a_folder_atomically(tiny_model, tmp_path):
    result = _train(tiny_model)
    out = tmp_path / "model"
    save_model(result.model, result.tokenizer, out)  # a previous output folder
    (out / "recover_log.json").write_text("{}")  # what an earlier post-hoc run left there
    save_model(result.model, result.tokenizer, out)
    assert (out / "model.safetensors").exists() and not (out / "recover_log.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left


def test_a_model_folder_holding_the_users_files_is_not_replaced(tiny_model, tmp_path):
    """A folder with a config.json AND the user's own files (their data, notes) is refused:
    replacing it as a whole would delete them."""
    from trimtab.errors import TrimtabError

    result = _train(tiny_model)
    out = tmp_path / "project"
    save_model(result.model, result.tokenizer, out)
    (out / "mydata.jsonl").write_text("{}\n")
    (out / "notes").mkdir()
    with pytest.raises(TrimtabError, match="also files a model save does not write "
                                           r"\(mydata.jsonl, notes\)"):
        save_model(result.model, result.tokenizer, out)
    assert (out / "mydata.jsonl").read_text() == "{}\n" and (out / "notes").is_dir()
    (out / "mydata.jsonl").unlink()
    (out / "notes").rmdir()
    (out / "README.md").write_text("---\ntitle: my notes\n---\n")  # front matter, not PEFT's
    (out / "my_probe.safetensors").write_bytes(b"")
    with pytest.raises(TrimtabError, match=r"\(README.md, my_probe.safetensors\)"):
        save_model(result.model, result.tokenizer, out)


def test_a_previous_lora_output_with_its_model_card_is_replaced(tiny_model, tmp_path):
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=1, per_device_train_batch_size=4, progress=False,
                         lora=True, lora_r=4)
    finetune(tiny_model, RECORDS, get_method("sft")(), config, output_dir=out)
    assert (out / "README.md").read_text().startswith("---")  # PEFT's model card
    finetune(tiny_model, RECORDS, get_method("sft")(), config, output_dir=out)
    assert (out / "adapter_model.safetensors").is_file()


class _NaNAtStep(SFTObjective):
    """SFT whose loss turns NaN on the given calls: a stand-in for a diverging run."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__()
        self.bad_calls, self.calls = bad_calls, 0

    def compute(self, policy, batch, reference=None):
        out = super().compute(policy, batch, reference)
        self.calls += 1
        if self.calls in self.bad_calls:
            out.loss = out.loss * float("nan")
        return out


def test_a_nan_loss_stops_training_naming_step_method_and_terms(tiny_model):
    config = TrainConfig(max_steps=4, per_device_train_batch_size=4, progress=False)
    with pytest.raises(TrimtabError, match=r"sft loss is nan at step 1 \(nll=") as err:
        finetune(tiny_model, RECORDS, _NaNAtStep({2}), config)
    assert "on_nonfinite_loss=skip" in str(err.value)


def test_skipping_nan_batches_counts_them_and_leaves_weights_finite(tiny_model):
    config = TrainConfig(max_steps=4, per_device_train_batch_size=4, progress=False,
                         logging_steps=1, on_nonfinite_loss="skip")
    with pytest.warns(UserWarning, match="2 batches were skipped"):
        result = finetune(tiny_model, RECORDS, _NaNAtStep({2, 3}), config)
    assert result.skipped_batches == 2
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    assert max(log.get("skipped_nonfinite_batches", 0) for log in result.log_history) == 2


def test_sharded_weights_refuse_sampling_and_copy_the_lora_reference(tiny_model, monkeypatch,
                                                                     tmp_path):
    """Under FSDP or ZeRO-3 (as `accelerate launch` announces them), `gated` is refused before
    any step, and a LoRA reference is a frozen copy, not the adapter-off policy, whose
    unwrapped forward would see sharded weights."""
    import trimtab.training.run as run
    from trimtab.objectives.composite import CompositeObjective

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert run.sharded_weights() is None  # ZeRO-2 keeps whole weights
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert run.sharded_weights() == "DeepSpeed ZeRO-3"
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")  # the stage in a DeepSpeed JSON file
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 3}}')
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ds))
    assert run.sharded_weights() == "DeepSpeed ZeRO-3"
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "NO_SHARD")  # whole weights: fine
    assert run.sharded_weights() is None
    monkeypatch.delenv("FSDP_SHARDING_STRATEGY")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for objective in (get_method("gated")(),
                      CompositeObjective([get_method("pact")(), get_method("gated")()])):
        with pytest.raises(TrimtabError, match="samples from the policy .* FSDP leaves the "
                                               "weights sharded"):
            run.check_sharding(objective)
    made = []
    original = run.Reference
    monkeypatch.setattr(run, "Reference", lambda *a: made.append(original(*a)) or made[-1])
    _train(tiny_model, lora=True, lora_r=4, max_steps=1)  # one process: FSDP only announced
    assert made[0].frozen is not None


def test_unknown_lora_targets_name_the_models_linear_layers(tiny_model):
    with pytest.raises(TrimtabError, match="none of lora_target_modules") as err:
        _train(tiny_model, lora=True, lora_target_modules=["attn"])
    listed = str(err.value).split("linear layers: ")[1]
    assert "q_proj" in listed and "lm_head" not in listed
    assert "layers" not in listed and "norm" not in listed


def test_a_cached_reference_is_never_an_output_folder(quick_refs, tiny_model):
    from trimtab.training.run import check_output_dir

    for folder in (quick_refs.base, quick_refs.aligned):
        with pytest.raises(TrimtabError, match="is a cached reference model"):
            check_output_dir(folder, tiny_model)


def test_a_new_run_removes_the_empty_trainer_folders_that_killed_runs_left(tmp_path,
                                                                         monkeypatch):
    """A run killed with SIGKILL cannot remove its scratch folder; the next run removes it
    when its process is gone and it is empty, and nothing else."""
    import os
    import subprocess
    import sys
    import tempfile

    from trimtab.training.scratch import remove_abandoned, scratch_folder

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    abandoned = tmp_path / f"trimtab-trainer-{dead}-a1"
    holding_data = tmp_path / f"trimtab-trainer-{dead}-b2"
    running = tmp_path / f"trimtab-trainer-{os.getpid()}-c3"
    for folder in (abandoned, holding_data, running):
        folder.mkdir()
    (holding_data / "notes.txt").write_text("a user's file")
    assert remove_abandoned(tmp_path) == [abandoned]
    assert not abandoned.exists() and holding_data.is_dir() and running.is_dir()
    # a run's own folder is named after its process, and removed when the run ends
    abandoned.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_folder() as mine:
        assert Path(mine).name.startswith(f"trimtab-trainer-{os.getpid()}-")
        assert not abandoned.exists()
    assert not Path(mine).exists()
