"""`trimtab bench` on the quick world: the grid, resuming, stale cells, reports, bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trimtab.bench import load_bench_config, parse_bench_config, run_bench
from trimtab.bench.config import cells, changed_settings, world_config
from trimtab.bench.report import render_bench_markdown
from trimtab.cli import main
from trimtab.errors import TrimtabError
from trimtab.evaluation.results import load_results

GRID = {"quick": True, "seeds": [0],
        "grid": [{"methods": ["sft", "kl", "sft+kl"],
                   "scenarios": ["harmful-0.1", "unsafe-init"]}]}


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, quick_refs) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run = run_bench(parse_bench_config(GRID), out, workers=0, progress=False)
    assert len(run.ran) == 6 and not run.reused and not run.pending
    return out


def test_the_grid_writes_every_cell_and_the_reports(bench_out):
    results = load_results(bench_out)  # validates the results contract
    got = {(r["method"], r["scenario"], r["task"], r["seed"]) for r in results["runs"]}
    assert got == {(m, s, "general", 0) for m in ("sft", "kl", "sft+kl")
                   for s in ("harmful-0.1", "unsafe-init")}
    for run in results["runs"]:
        assert run["cell_seconds"] >= run["train_seconds"] > 0
        assert run["tokens_per_second"] > 0 and run["log_history"]
    assert set(results["reference_by_task"]) == {"general"}
    sft_unsafe = next(r for r in results["runs"]
                      if (r["method"], r["scenario"]) == ("sft", "unsafe-init"))
    assert sft_unsafe["harmful_rate"] >= 0.5  # it started from a model that lost alignment
    report = (bench_out / "report.md").read_text()
    for heading in ("## Headline", "## Time per cell", "## Cost", "## Composition", "## Runs"):
        assert heading in report
    assert "sft+kl | harmful-0.1 | general |" in report
    for name in ("safety_utility.png", "training_curves.png"):
        assert (bench_out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (bench_out / "start-models").is_dir()


def test_the_report_names_settings_that_override_the_defaults(bench_out):
    from trimtab.demo import QUICK_TRAIN

    results = load_results(bench_out)
    assert results["bench"]["changed_settings"] == {}
    assert "override the defaults" not in render_bench_markdown(results)  # GRID overrides none
    # Settings written out with their default value (the quick world's 6 objects, its
    # learning rate, pact's T) change nothing and are not named.
    config = parse_bench_config({
        **GRID, "grid": [{"methods": ["sft", "pact"], "scenarios": ["benign"]}],
        "synthetic_world": {"borderline_objects": 6, "n_eval": 40},
        "train": {"learning_rate": QUICK_TRAIN.learning_rate, "progress": False},
        "methods": {"pact": {"lam": 0.1, "mass_weight": 1, "temperature": 2.0}, "sft": {}}})
    results["bench"]["changed_settings"] = changed_settings(config)
    assert ("`world`: n_eval = 40; `pact`: lam = 0.1, mass_weight = 1.0."
            in render_bench_markdown(results))
    del results["bench"]["changed_settings"]  # results from before it: the overrides as given
    results["bench"]["config"].update(methods={"pact": {"lam": 0.1, "mass_weight": 1.0}},
                                      synthetic_world={"borderline_objects": 6})
    assert ("`world`: borderline_objects = 6; `pact`: lam = 0.1, mass_weight = 1.0."
            in render_bench_markdown(results))


def test_a_rerun_skips_finished_cells_and_reruns_a_missing_one(bench_out):
    cell_files = sorted((bench_out / "cells").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cell_files}
    again = run_bench(parse_bench_config(GRID), bench_out, workers=0, progress=False)
    assert again.ran == [] and len(again.reused) == 6
    assert {p: p.stat().st_mtime_ns for p in cell_files} == stamps
    victim = bench_out / "cells" / "general__harmful-0.1__sft+kl__seed0.json"
    victim.unlink()
    third = run_bench(parse_bench_config(GRID), bench_out, workers=0, progress=False)
    assert [c.method for c in third.ran] == ["sft+kl"] and victim.is_file()


def test_finished_cells_with_other_settings_are_not_silently_reused(bench_out, tmp_path):
    changed = {**GRID, "train": {"learning_rate": 1e-3}}
    with pytest.raises(TrimtabError, match="other settings.*--overwrite"):
        run_bench(parse_bench_config(changed), bench_out, workers=0, progress=False)


def test_cells_run_with_since_changed_method_defaults_are_stale(bench_out, tmp_path):
    """The same bench config, but a stored cell records another default than the code has
    now (as after a release changes it): refused as stale, not mixed into new results."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(bench_out, out)
    cell = out / "cells" / "general__harmful-0.1__kl__seed0.json"
    run = json.loads(cell.read_text())
    run["config"]["method"]["beta"] = run["config"]["method"]["beta"] * 2  # an older default
    cell.write_text(json.dumps(run))
    with pytest.raises(TrimtabError, match=r"1 finished cell.*kl__seed0.*defaults"):
        run_bench(parse_bench_config(GRID), out, workers=0, progress=False)


def test_a_killed_bench_continues_where_it_stopped(tmp_path, quick_refs):
    config = write(tmp_path / "grid.yaml", {
        "quick": True, "grid": [{"methods": ["sft", "kl"], "scenarios": ["benign"]}]})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trimtab.cli", "bench", "--config", str(config), "--out",
           str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,  # killed: its scratch folders stay here
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    first = out / "cells" / "general__benign__sft__seed0.json"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timeout"
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its cell process, mid-grid
    proc.wait()
    stamp = first.stat().st_mtime_ns
    assert not (out / "results.json").exists()
    assert main(["bench", "--config", str(config), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    assert first.stat().st_mtime_ns == stamp  # the finished cell was kept, not rerun
    methods = {r["method"] for r in load_results(out)["runs"]}
    assert methods == {"sft", "kl"}
    log = json.loads((out / "invocations.json").read_text())
    assert log[-1]["cells_run"] == 1


def _sigterm_to_a_helper_thread(pid: int) -> None:
    """SIGTERM delivered to one of the process's threads other than the main one, as the
    kernel may deliver a `kill PID` (Linux: tgkill)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    helpers = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    for thread in helpers:  # one may have ended since the listing (ESRCH): try the next
        if libc.tgkill(pid, thread, signal.SIGTERM) == 0:
            return
    raise AssertionError(f"no helper thread of the bench took the signal ({helpers})")


def _has_tgkill() -> bool:
    import ctypes

    return sys.platform == "linux" and hasattr(ctypes.CDLL(None), "tgkill")


@pytest.mark.parametrize("receiver", [
    "process",
    pytest.param("helper thread", marks=pytest.mark.skipif(
        not _has_tgkill(), reason="thread-directed signals need Linux's tgkill")),
])
def test_sigterm_to_the_bench_stops_its_cells_instead_of_finishing_the_grid(tmp_path,
                                                                             quick_refs,
                                                                             receiver):
    """`kill PID` on `trimtab bench` alone, while a cell trains: the cell's process is stopped
    and cleans up like Ctrl-C, and no queued cell runs (one handed to the pool's call queue
    used to run to its end after the stop). The kernel may hand the signal to any thread of
    the bench: one sent to a helper thread of its process pool used to reach the handler
    only once the running cell had finished, so that cell was stored."""
    config = write(tmp_path / "grid.yaml", {
        "quick": True,
        "grid": [{"methods": ["sft", "kl", "soft-sft", "risk-kl"], "scenarios": ["benign"]}]})
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()  # TMPDIR of the bench and its cells: finetune's trainer folder lands here
    proc = subprocess.Popen([sys.executable, "-m", "trimtab.cli", "bench", "--config",
                             str(config), "--out", str(out), "--workers", "1", "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 300
        while not list(scratch.glob("trimtab-trainer-*")) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        training = list(scratch.glob("trimtab-trainer-*"))
        assert training, proc.stderr.read().decode() if proc.poll() is not None else "timeout"
        if receiver == "process":
            proc.send_signal(signal.SIGTERM)  # to the bench process only, as `kill PID` does
        else:
            _sigterm_to_a_helper_thread(proc.pid)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert not list(out.glob("cells/*.json"))  # the first cell was mid-training; none after it
    assert not list(scratch.glob("trimtab-trainer-*"))  # the cell's process cleaned up


def test_cells_are_the_union_of_blocks_once_each():
    config = parse_bench_config({"seeds": [0, 1], "grid": [
        {"methods": ["sft", "kl"], "scenarios": ["benign"]},
        {"methods": ["sft"], "scenarios": ["benign", "adversarial"], "seeds": [0],
         "tasks": ["general", "domain"]}]})
    got = cells(config)
    assert len(got) == len(set(got)) == 4 + 3
    assert {c.seed for c in got if c.scenario == "adversarial"} == {0}


@pytest.mark.parametrize(("change", "message"), [
    ({"grid": []}, "`grid` is empty"),
    ({"grid": [{"methods": ["sft"], "scenarios": ["harmful-2"]}]}, "unknown scenario"),
    ({"grid": [{"methods": ["sfx"], "scenarios": ["benign"]}]}, "Did you mean 'sft'"),
    ({"grid": [{"methods": ["sft"], "scenarios": ["benign"], "task": ["general"]}]},
     "Did you mean 'tasks'"),
    ({"train": {"learning_rat": 1e-3}}, "learning_rat"),
    ({"methods": {"gated": {"k": 4}}}, "no grid block uses"),
    ({"methods": {"kl": {"beta": "strong"}}}, "beta"),
    ({"blocks": []}, "Unknown key 'blocks'"),
    ({"curves_scenario": "sometimes"}, "unknown scenario"),
    ({"train": {"seed": 5}}, "each cell's seed comes from `seeds:`"),
    ({"synthetic_world": {"borderline_objets": 6}}, "Did you mean 'borderline_objects'"),
    ({"synthetic_world": {"borderline_objects": 12}}, "borderline_objects"),
    ({"grid": [{"methods": ["sft", "gated"], "scenarios": ["benign"]}],
      "methods": {"gated": {"signal": "oracle"}}}, "the oracle that evaluates this run"),
    ({"grid": [{"methods": ["risk-kl"], "scenarios": ["benign"]}],
      "methods": {"risk-kl": {"critic": "oracle,foo=1"}}}, "the oracle that evaluates this run"),
])
def test_bad_configs_fail_before_training_with_the_fix(change, message):
    base = {"grid": [{"methods": ["sft", "kl"], "scenarios": ["benign"]}]}
    with pytest.raises(TrimtabError, match=message):
        parse_bench_config({**base, **change})


def test_synthetic_world_overrides_pick_the_references_the_cells_are_keyed_by():
    """The committed config must build the references its committed results name, so that
    rerunning it reproduces those cells instead of redoing them on another world."""
    from trimtab.worlds.synthetic.build import reference_key
    from trimtab.worlds.synthetic.generator import SyntheticWorld

    def key(config):
        from trimtab.demo import world_configs

        return reference_key(SyntheticWorld(world_config(config)), world_configs(False)[1])

    grid = {"grid": [{"methods": ["sft"], "scenarios": ["benign"]}]}
    assert key(parse_bench_config(grid)) == "b057dffac11c"
    six = parse_bench_config({**grid, "synthetic_world": {"borderline_objects": 6}})
    assert key(six) == "88cbe7ad60a3"
    root = Path(__file__).resolve().parents[1]
    config = load_bench_config(root / "benchmarks/bench/synthetic.yaml")
    committed = json.loads((root / "benchmarks/results/bench/results.json").read_text())
    assert committed["model"] == f"synthetic-aligned-{key(config)}"


def test_the_committed_configs_parse():
    for path in sorted(Path(__file__).resolve().parents[1].glob("benchmarks/bench/*.yaml")):
        assert cells(load_bench_config(path))


def test_bench_cli_errors_are_clear(tmp_path, capsys):
    assert main(["bench", "--config", str(tmp_path / "missing.yaml"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "Config file not found" in capsys.readouterr().err
    grid = write(tmp_path / "g.yaml", {"quick": True,
                                       "grid": [{"methods": ["sft"], "scenarios": ["benign"]}]})
    assert main(["bench", "--config", str(grid), "--out", str(tmp_path / "o"), "--seeds",
                 "7"]) == 2
    assert "pick some of those" in capsys.readouterr().err
    assert main(["bench", "--config", str(grid), "--out", str(tmp_path / "o"), "--seeds",
                 "0", "7"]) == 2  # 7 is not in the grid: said, not silently skipped
    assert "pick some of those" in capsys.readouterr().err


def test_bench_refuses_an_out_folder_of_other_files_and_a_grid_that_trains_nothing(
        tmp_path, capsys):
    grid = write(tmp_path / "g.yaml", {"quick": True,
                                       "grid": [{"methods": ["sft"], "scenarios": ["benign"]}]})
    mine = tmp_path / "demo-out"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    assert main(["bench", "--config", str(grid), "--out", str(mine), "--workers", "0"]) == 2
    assert "did not write (report.md)" in capsys.readouterr().err
    assert (mine / "report.md").read_text() == "my report"
    idle = write(tmp_path / "idle.yaml", {"quick": True, "train": {"num_train_epochs": 0},
                                          "grid": [{"methods": ["sft"],
                                                    "scenarios": ["benign"]}]})
    assert main(["bench", "--config", str(idle), "--out", str(tmp_path / "o"), "--workers",
                 "0"]) == 2
    assert "nothing would be trained" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    none = write(tmp_path / "none.yaml", {"quick": True, "seeds": [],
                                          "grid": [{"methods": ["sft"],
                                                    "scenarios": ["benign"]}]})
    assert main(["bench", "--config", str(none), "--out", str(tmp_path / "o2"), "--workers",
                 "0"]) == 2
    assert "no cells" in capsys.readouterr().err
