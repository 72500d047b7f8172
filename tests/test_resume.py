"""Resume: a run killed with SIGKILL mid-way continues from its checkpoint and ends as an
uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import RECORDS, tiny_model  # noqa: F401  (a fixture)

from trimtab.errors import TrimtabError
from trimtab.objectives import get_method
from trimtab.training.checkpoints import checkpoint_dir, latest_checkpoint
from trimtab.training.config import TrainConfig
from trimtab.training.run import finetune

# Runs in a child process: train 8 steps with a checkpoint every 2, and (when asked) kill
# itself with SIGKILL as step 5 ends, after the checkpoint of step 4 was written.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from transformers import TrainerCallback
    from trimtab.data.records import Record
    from trimtab.objectives import get_method
    from trimtab.training.config import TrainConfig
    from trimtab.training.run import finetune

    model, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    records = [Record(**r) for r in json.loads(sys.argv[4])]

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    config = TrainConfig(max_steps=8, per_device_train_batch_size=4, learning_rate=1e-2,
                         save_steps=2, progress=False, warmup_ratio=0.0)
    finetune(model, records, get_method("kl")(), config, output_dir=out,
             callbacks=[Kill()] if kill_at else [])
""")


def _run(model: Path, out: Path, kill_at: int, records: list[dict]) -> int:
    scratch = out.parent / "tmp"  # the child's temp folder, to see what a kill leaves there
    scratch.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(out), str(kill_at),
                           json.dumps(records)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TMPDIR": str(scratch)}).returncode


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tiny_model, tmp_path):  # noqa: F811
    records = [r.to_dict() for r in RECORDS]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(tiny_model, whole, 0, records) == 0
    assert not checkpoint_dir(whole).exists()  # removed once the model is saved

    assert _run(tiny_model, killed, 5, records) == -signal.SIGKILL
    assert not killed.exists()  # nothing half-written where the model goes
    # and nothing in the temp folder: with checkpoints the trainer makes no scratch folder
    assert not list((tmp_path / "tmp").glob("trimtab-trainer-*"))
    assert latest_checkpoint(checkpoint_dir(killed)).name == "checkpoint-4"

    # another command on the same folder must not pick up this run's checkpoints
    other = TrainConfig(max_steps=8, per_device_train_batch_size=4, learning_rate=1e-3,
                        save_steps=2, progress=False, warmup_ratio=0.0)
    with pytest.raises(TrimtabError, match=r"checkpoints of another run \(train\.learning_rate "
                                           r"0\.01 -> 0\.001\).*--no-resume"):
        finetune(tiny_model, RECORDS, get_method("kl")(), other, output_dir=killed)
    with pytest.raises(TrimtabError, match=r"method 'kl' -> 'sft'"):
        finetune(tiny_model, RECORDS, get_method("sft")(), other, output_dir=killed)
    with pytest.raises(TrimtabError, match=r"\(the data\)"):
        finetune(tiny_model, RECORDS[:8], get_method("kl")(),
                 replace(other, learning_rate=1e-2), output_dir=killed)
    assert latest_checkpoint(checkpoint_dir(killed)).name == "checkpoint-4"  # untouched

    assert _run(tiny_model, killed, 0, records) == 0  # same command again: resumes
    assert not checkpoint_dir(killed).exists()
    a = load_file(whole / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_no_resume_starts_over_and_clears_an_earlier_runs_checkpoints(tiny_model, tmp_path):  # noqa: F811
    out = tmp_path / "model"
    stale = checkpoint_dir(out) / "checkpoint-6"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")  # from a run that recorded nothing
    config = TrainConfig(max_steps=2, per_device_train_batch_size=4, save_steps=1,
                         progress=False)
    with pytest.raises(TrimtabError, match="it records no run"):
        finetune(tiny_model, RECORDS, get_method("sft")(), config, output_dir=out)
    finetune(tiny_model, RECORDS, get_method("sft")(), replace(config, resume=False),
             output_dir=out)
    assert (out / "model.safetensors").is_file() and not checkpoint_dir(out).exists()


def test_latest_checkpoint_skips_a_half_written_one(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # killed while saving: no trainer state yet
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    assert latest_checkpoint(tmp_path / "missing") is None


def test_checkpoints_from_before_input_file_hashes_still_resume(tmp_path):
    """A run that recorded no input-file hashes (written before they were) resumes, with a
    warning; one that recorded another hash of the file is refused."""
    from trimtab.training.checkpoints import RUN_FILE, prepare_checkpoints

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    old = {"method": "pact", "data": "abc"}
    now = {**old, "input_files": {"tokens.json": "1111"}}
    (tmp_path / RUN_FILE).write_text(json.dumps(old))
    assert prepare_checkpoints(tmp_path, now, resume=True).name == "checkpoint-4"
    assert json.loads((tmp_path / RUN_FILE).read_text()) == now  # recorded from now on
    changed = {**old, "input_files": {"tokens.json": "2222"}}
    with pytest.raises(TrimtabError, match="input_files.tokens.json '1111' -> '2222'"):
        prepare_checkpoints(tmp_path, changed, resume=True)


def test_checkpoints_from_before_a_setting_existed_resume_at_its_default(tmp_path):
    """A method setting added after the checkpoints were written (pact's mass_positions) is
    no difference at its default, alone or in a composite; at another value it is."""
    from trimtab.objectives.composite import build_composite
    from trimtab.objectives.pact import PACTConfig, PACTObjective
    from trimtab.training.checkpoints import RUN_FILE, prepare_checkpoints, setting_defaults

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    for objective, method_config in (
            (PACTObjective(PACTConfig(mass_weight=1.0)), lambda c: c),
            (build_composite(["kl", "pact"], {"pact": PACTConfig(mass_weight=1.0)}),
             lambda c: {"kl": {"beta": 0.1}, "pact": c})):
        now = {"method": objective.name, "data": "abc",
               "method_config": method_config({"lam": 1.0, "mass_weight": 1.0,
                                               "mass_positions": 0})}
        old = json.loads(json.dumps(now))
        del (old["method_config"]["pact"] if "pact" in old["method_config"]
             else old["method_config"])["mass_positions"]
        (tmp_path / RUN_FILE).write_text(json.dumps(old))
        defaults = setting_defaults(objective)
        assert prepare_checkpoints(tmp_path, now, True, defaults).name == "checkpoint-4"
        assert json.loads((tmp_path / RUN_FILE).read_text()) == now  # recorded from now on
        (tmp_path / RUN_FILE).write_text(json.dumps(old))
        changed = json.loads(json.dumps(now).replace('"mass_positions": 0',
                                                     '"mass_positions": 1'))
        with pytest.raises(TrimtabError, match=r"mass_positions None -> 1"):
            prepare_checkpoints(tmp_path, changed, True, defaults)
        with pytest.raises(TrimtabError, match=r"mass_positions None -> 0"):
            prepare_checkpoints(tmp_path, now, True)  # without the defaults: refused


def test_checkpoints_from_before_a_judge_folder_was_hashed_still_resume(tmp_path, caplog):
    """A run that recorded its token file but not its judge's folder (gated's signal folder
    was hashed later) resumes with a warning naming the folder; the recorded file still
    counts, and a recorded folder that changed is refused."""
    from trimtab.training.checkpoints import RUN_FILE, prepare_checkpoints

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    old = {"method": "pact+gated", "data": "abc", "input_files": {"tokens.json": "1111"}}
    now = {**old, "input_files": {"tokens.json": "1111", "judge": "aaaa"}}
    (tmp_path / RUN_FILE).write_text(json.dumps(old))
    with caplog.at_level("WARNING"):
        assert prepare_checkpoints(tmp_path, now, resume=True).name == "checkpoint-4"
    assert "predate hashes of judge" in caplog.text
    with pytest.raises(TrimtabError, match="input_files.tokens.json '1111' -> '2222'"):
        prepare_checkpoints(tmp_path, {**old, "input_files": {"tokens.json": "2222",
                                                               "judge": "aaaa"}}, resume=True)
    (tmp_path / RUN_FILE).write_text(json.dumps(now))  # recorded: now it is checked
    with pytest.raises(TrimtabError, match="input_files.judge 'aaaa' -> 'bbbb'"):
        prepare_checkpoints(tmp_path, {**old, "input_files": {"tokens.json": "1111",
                                                               "judge": "bbbb"}}, resume=True)


def test_a_checkpoint_records_the_judge_folder_it_trained_with(tmp_path, monkeypatch):
    """gated's signal folder and risk-kl's critic folder join the run's fingerprint: a file
    changed, added or removed inside changes it, hidden bookkeeping does not. Judges loaded
    from no path (the world's classifier, keywords, a URL) add nothing."""
    from trimtab.objectives.gated import GatedConfig, GatedObjective
    from trimtab.objectives.risk_kl import RiskKLConfig, RiskKLObjective
    from trimtab.signals.keywords import KeywordConfig, KeywordSignal
    from trimtab.training import checkpoints
    from trimtab.training.checkpoints import run_fingerprint

    judge = tmp_path / "judge"
    (judge / "sub").mkdir(parents=True)
    (judge / "config.json").write_text('{"labels": 2}')
    (judge / "sub" / "weights.bin").write_bytes(b"\x00" * 64)

    def files(objective):
        return run_fingerprint(tmp_path, None, None, objective, TrainConfig(),
                               []).get("input_files")

    gated = GatedObjective(GatedConfig(signal=f"classifier:{judge}"))
    first = files(gated)
    assert list(first) == [str(judge)]
    assert files(RiskKLObjective(RiskKLConfig(critic=f"guard:{judge},rubric=binary"))) == first
    (judge / "sub" / "weights.bin").write_bytes(b"\x01" + b"\x00" * 63)
    changed = files(gated)
    assert changed != first
    (judge / "README.md").write_text("notes")
    added = files(gated)
    assert added not in (first, changed)
    (judge / "README.md").unlink()
    assert files(gated) == changed  # the same contents give the same hash
    gated.signal = KeywordSignal(KeywordConfig())  # what setup leaves: the judge it built
    assert files(gated) == changed

    # hidden bookkeeping (git, hub download metadata) changes without the judge: not hashed
    (judge / ".git").mkdir()
    (judge / ".git" / "FETCH_HEAD").write_text("abc")
    (judge / ".download.metadata").write_text("1732400000.0")
    assert files(gated) == changed
    # a symlinked folder is followed (a shared copy of the weights)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "head.bin").write_bytes(b"\x00" * 8)
    (judge / "linked").symlink_to(shared, target_is_directory=True)
    linked = files(gated)
    (shared / "head.bin").write_bytes(b"\x02" * 8)
    assert files(gated) != linked

    # a large file is hashed by its size and samples, not read whole, and not by its time
    monkeypatch.setattr(checkpoints, "HASH_MAX_BYTES", 16)
    monkeypatch.setattr(checkpoints, "SAMPLE_BYTES", 4)
    big = files(gated)
    os.utime(judge / "sub" / "weights.bin", ns=(1, 1))
    assert files(gated) == big
    (judge / "sub" / "weights.bin").write_bytes(b"\x01" + b"\x00" * 29 + b"\x03" + b"\x00" * 33)
    assert files(gated) != big  # a byte in the middle sample

    # nothing at PATH (a hub name) is recorded as such: a judge put there later is noticed
    for spec in ("hf:org/model-on-the-hub", f"classifier:{tmp_path / 'missing'}"):
        assert list(files(GatedObjective(GatedConfig(signal=spec))).values()) == ["missing"]
    for spec in ("classifier", "keywords", "http:http://127.0.0.1:9/v1"):
        assert files(GatedObjective(GatedConfig(signal=spec))) is None, spec
    assert files(GatedObjective(GatedConfig(signal=f"classifier:{judge}"),
                                signal=KeywordSignal(KeywordConfig()))) is None


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="needs Linux's /proc")
def test_a_judge_file_that_cannot_be_read_is_named(tmp_path):
    """A file in the judge folder that cannot be read stops the run with its name and what to
    do, not a bare OSError. /proc/self/mem fails to read from offset 0 (EIO), even for root,
    for whom no permission bit stops a read."""
    from trimtab.objectives.gated import GatedConfig, GatedObjective
    from trimtab.training.checkpoints import run_fingerprint

    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text('{"labels": 2}')
    (judge / "weights.bin").symlink_to("/proc/self/mem")
    objective = GatedObjective(GatedConfig(signal=f"classifier:{judge}"))
    with pytest.raises(TrimtabError, match=r"cannot read .*weights\.bin \(in .*judge\).*"
                                            r"Make it readable"):
        run_fingerprint(tmp_path, None, None, objective, TrainConfig(), [])


def test_the_output_folder_is_never_the_judge_folder(tiny_model, tmp_path):  # noqa: F811
    """A judge the method reads is an input like the model: saving over it is refused before
    anything runs, and the judge is left as it was."""
    from trimtab.objectives.gated import GatedConfig, GatedObjective

    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text('{"labels": 2}')  # a model folder: else refused anyway
    (judge / "model.safetensors").write_bytes(b"weights")
    objective = GatedObjective(GatedConfig(signal=f"hf:{judge}"))
    with pytest.raises(TrimtabError, match=rf"input of this run \({judge}: a judge"):
        finetune(tiny_model, RECORDS, objective, TrainConfig(max_steps=1, progress=False),
                 output_dir=judge)
    # nor a folder inside it: the model and its checkpoints would be written into the judge
    with pytest.raises(TrimtabError, match=rf"lies inside {judge}, a judge folder"):
        finetune(tiny_model, RECORDS, objective,
                 TrainConfig(max_steps=1, save_steps=1, progress=False),
                 output_dir=judge / "runs" / "out")
    assert sorted(p.name for p in judge.iterdir()) == ["config.json", "model.safetensors"]
    from trimtab.training.run import check_outside_judges

    tokens = tmp_path / "tokens.json"
    tokens.write_text("{}")
    for fine in (tmp_path / "judge-run", judge.parent / "out"):  # beside it, not inside
        check_outside_judges(fine, [str(judge), str(tokens), "org/model-on-the-hub"])
    with pytest.raises(TrimtabError, match="lies inside"):  # a relative path, resolved
        check_outside_judges(os.path.relpath(judge / "out"), [str(judge)])
    assert (judge / "model.safetensors").read_bytes() == b"weights"
