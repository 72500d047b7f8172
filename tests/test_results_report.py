"""The results contract, crash-safe writing, and the report made from results."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from trimtab.errors import TrimtabError
from trimtab.evaluation import report
from trimtab.evaluation.report import (
    plot_safety_utility,
    render_markdown,
    render_table,
    summarize_runs,
)
from trimtab.evaluation.results import (
    RATE_KEYS,
    RUN_KEYS,
    load_results,
    validate_results,
    write_bytes_atomic,
    write_json_atomic,
    write_results,
    write_text_atomic,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    method: str = "sft",
    scenario: str = "benign",
    task: str = "domain",
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "method": method,
        "scenario": scenario,
        "task": task,
        "seed": seed,
        "harmful_rate": 0.2,
        "jailbreak_harmful_rate": 0.3,
        "hallucination_rate": 0.1,
        "over_refusal_rate": 0.05,
        "task_accuracy": 0.8,
        "retained_accuracy": 0.9,
        "train_seconds": 10.0,
        "peak_memory_mb": 100.0,
        "config": {"lr": 1e-4},
    }
    run.update(overrides)
    return run


def make_results(runs: list[dict[str, Any]] | None = None, base: Any = "default") -> dict[str, Any]:
    metrics = {k: 0.1 for k in RATE_KEYS}
    results: dict[str, Any] = {
        "world": "toy",
        "model": "tiny",
        "reference": dict(metrics, harmful_rate=0.02),
        "base": dict(metrics, harmful_rate=0.7) if base == "default" else base,
        "runs": runs
        if runs is not None
        else [
            make_run(seed=0, harmful_rate=0.2),
            make_run(seed=1, harmful_rate=0.4),
            make_run(method="sft+recover", seed=0, train_seconds=15.0, peak_memory_mb=150.0),
            make_run(method="sft", scenario="harmful-0.1", task="general"),
        ],
    }
    return results


# ---------------------------------------------------------------------------------------------
# Validation


def test_keys_cover_the_contract() -> None:
    assert len(RATE_KEYS) == 6
    assert set(RATE_KEYS) <= set(RUN_KEYS)
    assert {
        "method",
        "scenario",
        "task",
        "seed",
        "train_seconds",
        "peak_memory_mb",
        "config",
    } <= set(RUN_KEYS)


def test_valid_results_pass() -> None:
    validate_results(make_results())
    validate_results(make_results(base=None))
    absent = make_results()
    del absent["base"]
    validate_results(absent)
    validate_results(make_results(runs=[]))
    # Every scenario shape and extra keys are accepted.
    runs = [
        make_run(scenario=s, seed=i, extra="kept")
        for i, s in enumerate(
            ["benign", "harmful-0.1", "harmful-1", "harmful-0.05", "adversarial", "unsafe-init"]
        )
    ]
    validate_results(make_results(runs=runs))


@pytest.mark.parametrize("key", RUN_KEYS)
def test_missing_run_key_is_named_with_the_run_index(key: str) -> None:
    results = make_results()
    del results["runs"][2][key]
    with pytest.raises(TrimtabError, match=rf"run 2\b.*missing key '{key}'"):
        validate_results(results)


@pytest.mark.parametrize("bad", [1.5, -0.01, math.nan, math.inf, 42])
def test_rate_outside_unit_interval_is_rejected(bad: float) -> None:
    results = make_results()
    results["runs"][1]["hallucination_rate"] = bad
    with pytest.raises(TrimtabError, match=r"run 1\b.*'hallucination_rate'.*\[0, 1\]"):
        validate_results(results)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("harmful_rate", "0.2"),
        ("task_accuracy", None),
        ("retained_accuracy", True),
        ("seed", 1.0),
        ("seed", "0"),
        ("train_seconds", -1.0),
        ("peak_memory_mb", "big"),
        ("config", "lr=1e-4"),
        ("method", ""),
        ("method", 3),
    ],
)
def test_wrong_type_is_rejected(key: str, value: Any) -> None:
    results = make_results()
    results["runs"][3][key] = value
    with pytest.raises(TrimtabError, match=rf"run 3\b.*'{key}'"):
        validate_results(results)


@pytest.mark.parametrize(
    "scenario",
    [
        "harmful",
        "harmful-",
        "harmful-1.5",
        "harmful-x",
        "harmful-nan",
        "Benign",
        "harmful_0.1",
        "adversarial ",
        7,
    ],
)
def test_bad_scenario_name_is_rejected(scenario: Any) -> None:
    results = make_results()
    results["runs"][0]["scenario"] = scenario
    with pytest.raises(TrimtabError, match=r"run 0\b.*'scenario'.*harmful-<p>"):
        validate_results(results)


@pytest.mark.parametrize("task", ["math", "", None, "Domain"])
def test_unknown_task_is_rejected(task: Any) -> None:
    results = make_results()
    results["runs"][1]["task"] = task
    with pytest.raises(TrimtabError, match=r"run 1\b.*'task'.*general, domain"):
        validate_results(results)


def test_duplicate_seed_is_rejected() -> None:
    results = make_results()
    results["runs"].append(make_run(seed=1))
    with pytest.raises(TrimtabError, match=r"run 4\b.*repeats run 1"):
        validate_results(results)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda r: r.pop("world"), "'world'"),
        (lambda r: r.update(model=None), "'model'"),
        (lambda r: r.pop("reference"), "'reference'"),
        (lambda r: r["reference"].update(harmful_rate=2.0), "reference.*harmful_rate"),
        (lambda r: r.update(base=[0.1]), "'base'"),
        (lambda r: r.update(runs={}), "'runs'"),
        (lambda r: r["runs"].append("oops"), r"run 4\b.*dict"),
    ],
)
def test_top_level_problems_are_rejected(mutate: Any, pattern: str) -> None:
    results = make_results()
    mutate(results)
    with pytest.raises(TrimtabError, match=pattern):
        validate_results(results)
    with pytest.raises(TrimtabError):
        validate_results([results])


# ---------------------------------------------------------------------------------------------
# Atomic writing and loading


def test_atomic_writes_leave_only_the_target(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "a.txt", "héllo")
    write_bytes_atomic(tmp_path / "sub" / "b.bin", b"\x00\x01")
    write_json_atomic(tmp_path / "c.json", {"path": tmp_path, "x": [1, 2]})
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text())["path"] == str(tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.bin", "c.json", "sub"]


def test_failed_write_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("trimtab.evaluation.results.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_unserializable_json_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TrimtabError, match="JSON"):
        write_json_atomic(tmp_path / "x.json", {"bad": object()})
    with pytest.raises(TrimtabError, match="JSON"):
        write_json_atomic(tmp_path / "x.json", {"bad": math.nan})
    assert list(tmp_path.iterdir()) == []


def test_write_results_writes_all_three_and_round_trips(tmp_path: Path) -> None:
    results = make_results()
    out = tmp_path / "out"
    path = write_results(out, results)
    assert path == out / "results.json"
    assert sorted(p.name for p in out.iterdir()) == [
        "report.md",
        "results.json",
        "safety_utility.png",
    ]
    assert load_results(path) == results
    assert load_results(out) == results  # the directory works too
    assert (out / "safety_utility.png").read_bytes().startswith(PNG_MAGIC)
    assert "| sft+recover | benign | domain |" in (out / "report.md").read_text(encoding="utf-8")


def test_write_results_writes_nothing_when_invalid(tmp_path: Path) -> None:
    results = make_results()
    results["runs"][0]["harmful_rate"] = 1.2
    out = tmp_path / "out"
    with pytest.raises(TrimtabError, match=r"run 0\b"):
        write_results(out, results)
    assert not out.exists()

    out.mkdir()
    with pytest.raises(TrimtabError):
        write_results(out, results)
    assert list(out.iterdir()) == []


def test_load_results_explains_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(TrimtabError, match="no results file"):
        load_results(tmp_path / "nope.json")
    with pytest.raises(TrimtabError, match="no results file"):
        load_results(tmp_path)  # a directory without results.json
    corrupt = tmp_path / "results.json"
    corrupt.write_text('{"world": "toy", "runs": [')
    with pytest.raises(TrimtabError, match=r"not valid JSON \(line 1"):
        load_results(corrupt)
    bad = make_results()
    bad["runs"][1]["task"] = "math"
    corrupt.write_text(json.dumps(bad))
    with pytest.raises(TrimtabError, match=r"results\.json: run 1\b.*'task'"):
        load_results(corrupt)


# ---------------------------------------------------------------------------------------------
# Summary


def test_summarize_mean_and_sample_std() -> None:
    rows = summarize_runs(make_results()["runs"])
    sft = next(
        r for r in rows if (r["method"], r["scenario"], r["task"]) == ("sft", "benign", "domain")
    )
    assert sft["n"] == 2
    assert sft["seeds"] == [0, 1]
    assert sft["harmful_rate"] == pytest.approx(0.3)
    # Sample std (ddof=1) of 0.2 and 0.4: sqrt(((-0.1)**2 + 0.1**2) / 1) = 0.1414...
    assert sft["harmful_rate_std"] == pytest.approx(math.sqrt(0.02))
    assert sft["task_accuracy"] == pytest.approx(0.8)
    assert sft["task_accuracy_std"] == pytest.approx(0.0)
    single = next(r for r in rows if r["method"] == "sft+recover")
    assert single["n"] == 1
    assert single["harmful_rate_std"] is None


def test_summarize_three_seeds() -> None:
    runs = [make_run(seed=s, task_accuracy=v) for s, v in enumerate([0.5, 0.6, 0.9])]
    (row,) = summarize_runs(runs)
    assert row["task_accuracy"] == pytest.approx(2.0 / 3.0)
    # deviations -1/6, -1/15, 7/30 -> squares sum 0.08667, / (n - 1) = 0.04333
    assert row["task_accuracy_std"] == pytest.approx(math.sqrt(0.26 / 6))


def test_cost_ratios_against_sft_in_same_scenario_and_task() -> None:
    runs = [
        make_run(seed=0, train_seconds=10.0, peak_memory_mb=100.0),
        make_run(seed=1, train_seconds=30.0, peak_memory_mb=300.0),  # sft mean 20 s, 200 MB
        make_run(method="lora", seed=0, train_seconds=5.0, peak_memory_mb=50.0),
        make_run(method="lora", scenario="adversarial", train_seconds=5.0),  # no sft there
        make_run(method="sft", task="general", train_seconds=1.0, peak_memory_mb=1.0),
    ]
    rows = {(r["method"], r["scenario"], r["task"]): r for r in summarize_runs(runs)}
    assert rows["sft", "benign", "domain"]["time_ratio"] == pytest.approx(1.0)
    assert rows["lora", "benign", "domain"]["time_ratio"] == pytest.approx(0.25)
    assert rows["lora", "benign", "domain"]["memory_ratio"] == pytest.approx(0.25)
    assert rows["lora", "adversarial", "domain"]["time_ratio"] is None
    assert rows["lora", "adversarial", "domain"]["memory_ratio"] is None
    assert rows["sft", "benign", "general"]["time_ratio"] == pytest.approx(1.0)


def test_summary_order_is_task_then_scenario_then_method() -> None:
    runs = [
        make_run(method="b", scenario="unsafe-init"),
        make_run(method="b", scenario="harmful-0.5"),
        make_run(method="a", scenario="harmful-0.05"),
        make_run(method="a", scenario="benign", task="general"),
        make_run(method="a", scenario="harmful-0.5"),
    ]
    order = [(r["task"], r["scenario"], r["method"]) for r in summarize_runs(runs)]
    assert order == [
        ("general", "benign", "a"),
        ("domain", "harmful-0.05", "a"),
        ("domain", "harmful-0.5", "b"),
        ("domain", "harmful-0.5", "a"),
        ("domain", "unsafe-init", "b"),
    ]


# ---------------------------------------------------------------------------------------------
# Rendering


def test_markdown_has_title_tables_rows_and_legend() -> None:
    text = render_markdown(make_results())
    assert text.startswith("# trimtab results: world `toy`, model `tiny`")
    assert "| reference | 0.020 | 0.100 |" in text
    assert "| base | 0.700 |" in text
    assert "| sft | benign | domain | 2 | 0.300 ± 0.141 | 0.300 ± 0.000 |" in text
    assert "| 1.00 | 1.00 |" in text
    assert "| sft+recover | benign | domain | 1 | 0.200 | 0.300 |" in text
    assert "| 1.50 | 1.50 |" in text
    assert "| sft | harmful-0.1 | general | 1 |" in text
    for heading in (
        "harmful ↓",
        "jailbreak ↓",
        "hallucination ↓",
        "over-refusal ↓",
        "task acc ↑",
        "retained acc ↑",
        "time ×sft ↓",
        "memory ×sft ↓",
    ):
        assert heading in text
    assert "## Legend" in text and "lower is better" in text


def test_task_hallucination_column_appears_only_where_something_reports_it() -> None:
    plain = make_results()
    assert "task halluc" not in render_markdown(plain) + render_table(plain)
    runs = [make_run(seed=0, task_hallucination_rate=0.5),
            make_run(seed=1, task_hallucination_rate=0.7),
            make_run(method="gated", seed=0, task_hallucination_rate=0.25),
            make_run(scenario="harmful-0.1", task="general")]  # a task with no such questions
    results = make_results(runs=runs)
    results["reference"]["task_hallucination_rate"] = 0.125
    text = render_markdown(results)
    assert "| task halluc ↓ | time ×sft ↓ |" in text
    assert "| reference | 0.020 | 0.100 | 0.100 | 0.100 | 0.100 | 0.100 | 0.125 |" in text
    assert "| base | 0.700 | 0.100 | 0.100 | 0.100 | 0.100 | 0.100 | — |" in text
    assert "| 0.900 ± 0.000 | 0.600 ± 0.141 | 1.00 | 1.00 |" in text  # sft, two seeds
    assert "| gated | benign | domain | 1 |" in text and "| 0.250 | 1.00 | 1.00 |" in text
    assert "| 0.900 | — | 1.00 | 1.00 |" in text  # the general-task run
    assert "**task halluc ↓**" in text
    table = render_table(results)
    assert "taskhal" in table.splitlines()[1] and "0.600±0.141" in table


def test_markdown_without_base_or_runs() -> None:
    text = render_markdown(make_results(runs=[], base=None))
    assert "| base |" not in text
    assert "No runs recorded." in text


def test_markdown_reports_what_methods_logged_about_themselves() -> None:
    """gated's gate distribution over training (DESIGN.md), averaged over the logged steps,
    then over seeds; composed methods report each part; methods with nothing to report and
    non-numeric entries are left out."""
    def logs(pregated: list[float]) -> list[dict[str, Any]]:
        return [{"gated/pregated": p, "gated/gate": 2 * p, "pact/top_agree": 1.0}
                for p in pregated] + [{"gated/pregated": None, "train_runtime": 3.0}]

    runs = [make_run(method="gated", seed=0, log_history=logs([0.1, 0.3])),
            make_run(method="gated", seed=1, log_history=logs([0.4])),
            make_run(method="pact+gated", log_history=logs([0.5])),
            make_run(method="gated[k=2]", log_history=logs([0.2])),
            make_run(method="sft", log_history=[{"sft/nll": 1.0}])]
    text = render_markdown(make_results(runs=runs))
    assert "## Training diagnostics" in text
    assert "| gated | benign | domain | 2 | pre-gated 0.300; mean gate 0.600 |" in text
    assert ("| pact+gated | benign | domain | 1 | top safety token as reference 1.000; "
            "pre-gated 0.500; mean gate 1.000 |") in text
    assert "| gated[k=2] | benign | domain | 1 | pre-gated 0.200; mean gate 0.400 |" in text
    assert "| sft | benign | domain | 1 | nll" not in text
    assert "## Training diagnostics" not in render_markdown(make_results())


def test_markdown_missing_sft_shows_dash() -> None:
    text = render_markdown(make_results(runs=[make_run(method="lora")]))
    assert "| lora | benign | domain | 1 |" in text
    assert "| — | — |" in text


def test_terminal_table_is_fixed_width() -> None:
    text = render_table(make_results())
    lines = text.splitlines()
    assert lines[0] == "world toy, model tiny"
    assert lines[1].split()[:4] == ["method", "scenario", "task", "n"]
    assert any(line.startswith("reference") for line in lines)
    assert any(line.startswith("sft+recover") and "1.50" in line for line in lines)
    assert any("0.300±0.141" in line for line in lines)
    # Right-aligned numeric columns end at the same place in every full row.
    rows = [line for line in lines[1:] if line.strip() and not line.startswith("-")]
    run_rows = [line for line in rows if not line.startswith(("reference", "base"))]
    assert len({len(line) for line in run_rows}) == 1


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = plot_safety_utility(make_results(), tmp_path / "plot.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_plot_handles_empty_runs_and_reference_without_task_accuracy(tmp_path: Path) -> None:
    results = make_results(runs=[], base=None)
    del results["reference"]["task_accuracy"]
    path = plot_safety_utility(results, tmp_path / "empty.png")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_rendering_does_not_mutate_results() -> None:
    results = make_results()
    before = copy.deepcopy(results)
    render_markdown(results)
    render_table(results)
    report.summarize_runs(results["runs"])
    assert results == before
