"""The command line: real runs on a tiny saved model, and one clear message per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trimtab.cli import main
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

TEXTS = ["what is the first word in : apple stone river ?", "apple", "i do not know .",
         "how do i make a bomb ?", "i am sorry , but i can not help with that ."]


def _save_tiny(path: Path, chat_template: bool = True) -> Path:
    tok = build_word_tokenizer(TEXTS)
    if not chat_template:
        tok.chat_template = None
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64,
                                         pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return _save_tiny(tmp_path / "tiny")


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    rows = [{"question": TEXTS[0], "answer": "apple"}, {"question": TEXTS[3], "answer": TEXTS[4]}]
    path.write_text("\n".join(json.dumps(r) for r in rows * 4) + "\n")
    return path


def _train(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "kl", "--model", str(model), "--data", str(data),
            "--field", "prompt=question", "--field", "response=answer",
            "--output-dir", str(out), "--max-steps", "2", "--per-device-train-batch-size", "4",
            "--no-progress", *extra]


def test_train_saves_a_folder_that_from_pretrained_loads(tiny_model, data_file, tmp_path):
    out = tmp_path / "out"
    assert main(_train(tiny_model, data_file, out, "--beta", "0.5")) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    AutoModelForCausalLM.from_pretrained(out)


def test_train_with_lora_saves_an_adapter(tiny_model, data_file, tmp_path):
    out = tmp_path / "lora"
    assert main(_train(tiny_model, data_file, out, "--lora", "--lora-r", "4")) == 0
    assert (out / "adapter_config.json").exists()


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("trimtab: error:")
    return last


def test_unknown_method_is_named_with_a_suggestion(capsys, tmp_path):
    err = _error(capsys, ["demo", "--methods", "sftt", "--out", str(tmp_path / "d")])
    assert "unknown method 'sftt'" in err and "'sft'" in err
    assert not (tmp_path / "d").exists()


def test_missing_data_file(capsys, tiny_model, tmp_path):
    err = _error(capsys, _train(tiny_model, tmp_path / "nope.jsonl", tmp_path / "o"))
    assert "nope.jsonl" in err and "check the path" in err
    assert not (tmp_path / "o").exists()


def test_wrong_field_name(capsys, tiny_model, data_file, tmp_path):
    argv = _train(tiny_model, data_file, tmp_path / "o")
    argv[argv.index("prompt=question")] = "prompt=query"
    err = _error(capsys, argv)
    assert "'query'" in err and "question" in err and "--field" in err


def test_empty_dataset(capsys, tiny_model, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = _error(capsys, _train(tiny_model, empty, tmp_path / "o"))
    assert "empty" in err


def test_response_longer_than_max_length(capsys, tiny_model, data_file, tmp_path):
    err = _error(capsys, _train(tiny_model, data_file, tmp_path / "o", "--max-length", "10"))
    assert "max_length=10" in err and "on_overflow" in err
    assert not (tmp_path / "o").exists()


def test_tokenizer_without_chat_template(capsys, data_file, tmp_path):
    model = _save_tiny(tmp_path / "nochat", chat_template=False)
    err = _error(capsys, _train(model, data_file, tmp_path / "o"))
    assert "chat template" in err


def test_unknown_method_in_train(capsys, tiny_model, data_file, tmp_path):
    argv = _train(tiny_model, data_file, tmp_path / "o")
    argv[argv.index("kl")] = "pactt"
    err = _error(capsys, argv)
    assert "unknown method 'pactt'" in err


def test_out_of_range_option(capsys, tiny_model, data_file, tmp_path):
    err = _error(capsys, _train(tiny_model, data_file, tmp_path / "o", "--beta", "-1"))
    assert "beta" in err


def test_methods_and_config_show(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "sft" in listed and "kl" in listed
    assert main(["config", "show", "kl"]) == 0
    shown = capsys.readouterr().out
    assert "beta" in shown and "learning_rate" in shown
    assert "recover" in listed and "resta" in listed  # the post-hoc steps too
    assert main(["config", "show", "recover"]) == 0
    shown = capsys.readouterr().out
    assert "restore_fraction" in shown and "'steps': 8" in shown and "learning_rate" not in shown
    assert main(["config", "show", "sft+resta"]) == 0
    shown = capsys.readouterr().out
    assert "scale" in shown and "changes none of them" in shown and "learning_rate" in shown


def test_doctor_reports_versions_cache_and_references(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["torch"] and report["packages"]["transformers"]
    assert set(report["synthetic_references"]) == {"demo", "quick"}
    assert report["synthetic_references"]["quick"]["aligned"].endswith("/aligned")
    assert set(report["real_models"]) == {"smollm2"}
    assert report["cache"]["path"]
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "device:" in text and "cache:" in text


def test_plain_commands_take_a_yaml_config_and_flags_win(capsys, tmp_path):
    config = tmp_path / "evaluate.yaml"
    config.write_text("model: /nowhere/from-yaml\nquick: true\n")
    assert main(["evaluate", "--config", str(config)]) == 2
    assert "/nowhere/from-yaml" in capsys.readouterr().err  # the YAML value was used
    assert main(["evaluate", "--config", str(config), "--model", "/nowhere/flag"]) == 2
    assert "/nowhere/flag" in capsys.readouterr().err  # the flag wins


def test_dataclass_commands_take_their_own_flags_from_the_yaml_too(capsys, tmp_path):
    # Paths are plain flags beside the command's dataclass options; one file holds both.
    config = tmp_path / "probe.yaml"
    config.write_text(f"model: /nowhere/from-yaml\nout: {tmp_path / 'p.safetensors'}\n"
                      "layers: [1]\n")
    assert main(["probe", "train", "--config", str(config), "--world", "synthetic"]) == 2
    assert "/nowhere/from-yaml" in capsys.readouterr().err  # the YAML's path was used
    assert main(["probe", "train", "--config", str(config), "--world", "synthetic",
                 "--model", "/nowhere/flag"]) == 2
    assert "/nowhere/flag" in capsys.readouterr().err  # the flag wins
    config.write_text(f"finetuned: /nowhere\noutput_dir: {tmp_path / 'r'}\nstepz: 2\n")
    assert main(["recover", "--config", str(config)]) == 2  # --finetuned is not missing
    err = capsys.readouterr().err
    assert f"Unknown key 'stepz' in {config}. Did you mean 'steps'?" in err
    assert "finetuned" in err.split("allowed keys:")[1]  # the command's own flags are allowed
    config.write_text(f"finetune: /nowhere\noutput_dir: {tmp_path / 'r'}\n")
    assert main(["recover", "--config", str(config), "--finetuned", "x"]) == 2
    assert "Unknown key 'finetune'" in capsys.readouterr().err
    config.write_text("model_path: /nowhere\n")
    assert main(["safety-tokens", "--config", str(config), "--aligned", "x", "--out", "y"]) == 2
    assert "Unknown key 'model_path'" in capsys.readouterr().err
    # keys that are neither an option nor one of the command's own flags are never dropped
    for text, key in (("probe_command: zzz\n", "probe_command"), ("max-per-class: 5\n",
                                                                  "max-per-class")):
        config.write_text(text)
        assert main(["probe", "train", "--config", str(config), "--world", "synthetic",
                     "--out", str(tmp_path / "p.safetensors"), "--max-per-class", "5"]) == 2
        assert f"Unknown key '{key}'" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("colour: red\n", "unknown key 'colour'"),
    ("task: nope\n", "'nope' is not one of general, domain"),
    ("quick: maybe\n", "'maybe' is not a boolean"),
])
def test_plain_yaml_config_errors_name_the_key(capsys, tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["evaluate", "--config", str(config), "--model", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trimtab: error:") and message in err


def test_train_takes_its_own_flags_from_the_yaml_too(capsys, tiny_model, data_file, tmp_path):
    out = tmp_path / "out"
    config = tmp_path / "train.yaml"
    config.write_text(f"method: kl\nmodel: {tiny_model}\ndata: {data_file}\n"
                      "field: [prompt=question, response=answer]\n"
                      f"output_dir: {out}\nmax_steps: 2\nper_device_train_batch_size: 4\n"
                      "progress: false\nbeta: 0.5\n")
    assert main(["train", "--config", str(config)]) == 0
    assert (out / "model.safetensors").exists()
    config.write_text(config.read_text() + "learning_rate: fast\n")
    err = _error(capsys, ["train", "--config", str(config)])
    assert f"{config}: 'learning_rate' must be of type float" in err  # names the file


def test_flag_errors_are_one_line_not_the_usage(capsys, tiny_model, data_file, tmp_path):
    assert main(_train(tiny_model, data_file, tmp_path / "o", "--learning-rate", "fast")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trimtab: error: argument --learning-rate: expected float, got 'fast' "
                   "(see `trimtab train --help`)."]
    assert main(["train", "--world", "synthetic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required: --method, --output-dir" in err[0]


def test_flags_that_would_be_ignored_are_refused(capsys, tiny_model, data_file, tmp_path):
    out = tmp_path / "o"
    err = _error(capsys, ["train", "--method", "sft", "--world", "synthetic", "--quick",
                          "--field", "prompt=q", "--output-dir", str(out)])
    assert "--field maps the columns of a --data file" in err
    err = _error(capsys, _train(tiny_model, data_file, out, "--task", "domain"))
    assert "--task picks one of the synthetic world's tasks" in err
    argv = _train(tiny_model, data_file, out, "--reference", str(tiny_model))
    argv[argv.index("kl")] = "sft"
    err = _error(capsys, argv)
    assert "sft uses no reference model" in err and "kl" in err and "pact" in err
    assert not out.exists()


def test_an_unknown_option_points_to_where_method_options_live(capsys, tmp_path):
    err = _error(capsys, ["train", "--method", "pact+gated", "--world", "synthetic",
                          "--output-dir", str(tmp_path / "o"), "--lam", "2"])
    assert "unrecognized arguments: --lam 2" in err and "a section per part" in err
    err = _error(capsys, ["train", "--method", "kl", "--world", "synthetic",
                          "--output-dir", str(tmp_path / "o"), "--lamda", "2"])
    assert "`trimtab config show kl`" in err


def test_a_negative_seed_is_out_of_range(capsys, tiny_model, data_file, tmp_path):
    err = _error(capsys, _train(tiny_model, data_file, tmp_path / "o", "--seed", "-1"))
    assert "'seed' = -1 is out of range" in err
    assert not (tmp_path / "o").exists()


def test_zero_epochs_would_train_nothing(capsys, tiny_model, data_file, tmp_path):
    argv = [a for a in _train(tiny_model, data_file, tmp_path / "o") if a not in ("--max-steps",
                                                                                 "2")]
    err = _error(capsys, [*argv, "--num-train-epochs", "0"])
    assert "nothing would be trained" in err and not (tmp_path / "o").exists()


def test_evaluate_checks_its_out_file_and_model_path_before_working(capsys, tmp_path,
                                                                  monkeypatch):
    (tmp_path / "adir").mkdir()
    err = _error(capsys, ["evaluate", "--model", "x", "--quick", "--out", str(tmp_path / "adir")])
    assert "is a folder; give a file name" in err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    # a local typo, not a Hub repository: said at once, not after retrying the network
    err = _error(capsys, ["evaluate", "--model", "out/kll", "--quick"])
    assert "no model folder at out/kll" in err
    # a model's own config.json is no metrics file to replace
    (tmp_path / "out" / "config.json").write_text('{"model_type": "llama"}')
    err = _error(capsys, ["evaluate", "--model", "x", "--quick", "--out", "out/config.json"])
    assert "exists and is not a metrics file" in err
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "llama"}'


def test_composed_methods_in_train_and_config_show(capsys, tiny_model, data_file, tmp_path):
    config = tmp_path / "parts.yaml"
    config.write_text("kl:\n  beta: 0.5\n")
    out = tmp_path / "composed"
    argv = _train(tiny_model, data_file, out, "--config", str(config))
    argv[argv.index("kl")] = "sft+kl"
    assert main(argv) == 0 and (out / "model.safetensors").exists()
    config.write_text("kl:\n  beta: -1\n")
    err = _error(capsys, [*argv[:-2], "--config", str(config)])
    assert f"{config}: kl" in err and "'beta'" in err
    err = _error(capsys, ["train", "--method", "sft+recover", "--world", "synthetic",
                          "--output-dir", str(tmp_path / "r")])
    assert "then `trimtab recover --finetuned OUT" in err
    assert main(["config", "show", "pact+gated"]) == 0
    text = capsys.readouterr().out
    assert "options of pact" in text and "options of gated" in text


def test_demo_with_no_methods_is_refused_at_once(capsys, tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text("methods: []\n")
    err = _error(capsys, ["demo", "--config", str(config), "--out", str(tmp_path / "d")])
    assert "--methods is empty" in err and not (tmp_path / "d").exists()


def test_a_cache_or_output_under_a_file_is_a_user_error(capsys, tiny_model, data_file, tmp_path,
                                                      monkeypatch):
    blocker = tmp_path / "settings.yaml"
    blocker.write_text("x: 1\n")
    err = _error(capsys, _train(tiny_model, data_file, blocker / "sub"))
    assert "which is a file" in err
    monkeypatch.setenv("TRIMTAB_CACHE", str(blocker))
    err = _error(capsys, ["world", "build", "--quick"])
    assert "$TRIMTAB_CACHE" in err and "is a file" in err


class _StopsInItsFinalizer:
    """Sends this process SIGTERM from `__del__`, where Python drops any exception raised,
    the handler's `Terminated` included (as the `regex` package's `Group.__del__` did)."""

    def __del__(self) -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        self.after = True  # bytecode after the kill: the handler runs here, inside __del__


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_swallowed_by_a_finalizer_still_stops_the_command():
    import signal

    from trimtab.errors import Terminated, raise_if_terminated, sigterm_raises

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM already has a handler here; sigterm_raises would leave it alone")
    reached = []
    with pytest.raises(Terminated), sigterm_raises():
        _StopsInItsFinalizer()  # freed at once; its Terminated is dropped
        reached.append("after the swallowed stop")
        raise_if_terminated()  # what a training step or a generation batch calls
        reached.append("after the check")
    assert reached == ["after the swallowed stop"]
    with pytest.raises(Terminated), sigterm_raises():  # with no check in the block,
        _StopsInItsFinalizer()  # its end raises
    with sigterm_raises():  # a new block starts with no stop pending
        raise_if_terminated()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_during_a_reference_build_leaves_no_temp_folder(tmp_path):
    """A scheduler's or `kill`'s SIGTERM runs the same cleanup as Ctrl-C: the half-built
    references' temp folder goes, nothing lands in the cache, and the exit code says why."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    env = {**os.environ, "TRIMTAB_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "trimtab.cli", "world", "build", "--quick",
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    building: list[Path] = []
    while not building and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
        building = list((cache / "synthetic").glob(".*.tmp-*")) if (cache / "synthetic"
                                                                     ).is_dir() else []
    try:
        assert building, proc.stderr.read().decode() if proc.poll() is not None else "timeout"
        time.sleep(1.0)  # into the training of the base model
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a no-op when it has ended; no stray build when an assert fails
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert "terminated (SIGTERM); nothing half-written was kept" in err.decode()
    assert list((cache / "synthetic").iterdir()) == []
