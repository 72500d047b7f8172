"""The results file: its schema check, crash-safe writing and loading.

`results.json` is the one hand-off between an experiment and everything that reads it (the
report, the plot, later comparisons), so it is checked before it is written and written so that
a crash can never leave half a file behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trimtab.errors import TrimtabError

RESULTS_NAME = "results.json"
REPORT_NAME = "report.md"
PLOT_NAME = "safety_utility.png"

# The six metrics every run reports, all fractions in [0, 1].
RATE_KEYS: tuple[str, ...] = (
    "harmful_rate",  # harmful requests answered; lower is better
    "jailbreak_harmful_rate",  # jailbreak-wrapped harmful requests answered; lower is better
    "hallucination_rate",  # unanswerable questions answered with made-up facts; lower is better
    "over_refusal_rate",  # benign (borderline) requests refused; lower is better
    "task_accuracy",  # accuracy on the fine-tuning task; higher is better
    "retained_accuracy",  # general tasks the reference model could do; higher is better
)
# Cost metrics every run reports, non-negative numbers.
COST_KEYS: tuple[str, ...] = ("train_seconds", "peak_memory_mb")
# Every key a run must have; extra keys are allowed and kept.
RUN_KEYS: tuple[str, ...] = ("method", "scenario", "task", "seed", *RATE_KEYS, *COST_KEYS, "config")

TASKS: tuple[str, ...] = ("general", "domain")
SCENARIOS_FIXED: tuple[str, ...] = ("benign", "adversarial", "unsafe-init")
_HARMFUL_SCENARIO = re.compile(r"harmful-([0-9][0-9.eE+-]*|\.[0-9]+)")

_PRODUCER_HINT = (
    "results files are written by trimtab itself; if this one was edited by hand or by a "
    "script, fix or regenerate it by rerunning the evaluation"
)


def harmful_fraction(scenario: str) -> float | None:
    """The harmful fraction p of a `harmful-<p>` scenario name, or None for other names.

    Lets the report sort scenarios by how much harmful data they mixed in.
    """
    match = _HARMFUL_SCENARIO.fullmatch(scenario)
    if match is None:
        return None
    try:
        p = float(match.group(1))
    except ValueError:
        return None
    return p if math.isfinite(p) and 0.0 <= p <= 1.0 else None


def is_valid_scenario(scenario: Any) -> bool:
    """True for `benign`, `adversarial`, `unsafe-init` and `harmful-<p>` with p in [0, 1]."""
    if not isinstance(scenario, str):
        return False
    return scenario in SCENARIOS_FIXED or harmful_fraction(scenario) is not None


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True as a rate is always a bug upstream.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_rate(where: str, key: str, value: Any) -> None:
    if not _is_number(value):
        raise TrimtabError(
            f"{where}: '{key}' is {value!r} ({type(value).__name__}), not a number; "
            f"rates are fractions in [0, 1]. {_PRODUCER_HINT}."
        )
    if not math.isfinite(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise TrimtabError(
            f"{where}: '{key}' is {value!r}, outside [0, 1]; rates are fractions, not "
            f"percentages or counts. {_PRODUCER_HINT}."
        )


def _check_metrics(name: str, metrics: Any, *, optional: bool) -> None:
    """Reference and base metrics: the rates that are present must be fractions."""
    if metrics is None and optional:
        return
    if not isinstance(metrics, Mapping):
        allowed = "a dict of metrics or null" if optional else "a dict of metrics"
        raise TrimtabError(
            f"results '{name}' is {type(metrics).__name__}, expected {allowed}. {_PRODUCER_HINT}."
        )
    for key in RATE_KEYS:
        value = metrics.get(key)
        if value is not None:
            _check_rate(f"results '{name}'", key, value)


def _run_label(index: int, run: Mapping[str, Any]) -> str:
    parts = [f"{k} {run[k]!r}" for k in ("method", "scenario", "task", "seed") if k in run]
    return f"run {index}" + (f" ({', '.join(parts)})" if parts else "")


def _check_run(index: int, run: Any) -> None:
    if not isinstance(run, Mapping):
        raise TrimtabError(
            f"run {index} is {type(run).__name__}, expected a dict. {_PRODUCER_HINT}."
        )
    where = _run_label(index, run)
    missing = [key for key in RUN_KEYS if key not in run]
    if missing:
        raise TrimtabError(
            f"{where}: missing key '{missing[0]}'"
            + (f" (and {', '.join(repr(k) for k in missing[1:])})" if len(missing) > 1 else "")
            + f"; every run needs {', '.join(RUN_KEYS)}. {_PRODUCER_HINT}."
        )
    method = run["method"]
    if not isinstance(method, str) or not method.strip():
        raise TrimtabError(
            f"{where}: 'method' is {method!r}, expected a non-empty string such as 'sft' or "
            f"'sft+recover'. {_PRODUCER_HINT}."
        )
    if not is_valid_scenario(run["scenario"]):
        raise TrimtabError(
            f"{where}: 'scenario' is {run['scenario']!r}; expected one of "
            f"{', '.join(SCENARIOS_FIXED)} or harmful-<p> with p a fraction in [0, 1] "
            f"(e.g. harmful-0.1). {_PRODUCER_HINT}."
        )
    if run["task"] not in TASKS:
        raise TrimtabError(
            f"{where}: 'task' is {run['task']!r}; expected one of {', '.join(TASKS)}. "
            f"{_PRODUCER_HINT}."
        )
    seed = run["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TrimtabError(
            f"{where}: 'seed' is {seed!r} ({type(seed).__name__}), expected an integer. "
            f"{_PRODUCER_HINT}."
        )
    for key in RATE_KEYS:
        _check_rate(where, key, run[key])
    for key in COST_KEYS:
        value = run[key]
        if not _is_number(value) or not math.isfinite(float(value)) or float(value) < 0:
            raise TrimtabError(
                f"{where}: '{key}' is {value!r}, expected a non-negative number. {_PRODUCER_HINT}."
            )
    if not isinstance(run["config"], Mapping):
        raise TrimtabError(
            f"{where}: 'config' is {type(run['config']).__name__}, expected a dict of the "
            f"settings the run used. {_PRODUCER_HINT}."
        )


def validate_results(obj: Any) -> None:
    """Raise TrimtabError naming the first problem (run index and key) in a results object.

    Checked: top-level keys and types; in each run, every key of RUN_KEYS present, rates finite
    and in [0, 1], costs non-negative, seed an integer, scenario and task names known, and no two
    runs sharing method, scenario, task and seed (they would be averaged as if distinct seeds).
    Reference and base may hold fewer metrics than a run; base may be null or absent.
    """
    if not isinstance(obj, Mapping):
        raise TrimtabError(
            f"results must be a dict (a JSON object), got {type(obj).__name__}. {_PRODUCER_HINT}."
        )
    for key in ("world", "model"):
        if key not in obj:
            raise TrimtabError(f"results: missing key '{key}'. {_PRODUCER_HINT}.")
        if not isinstance(obj[key], str) or not obj[key]:
            raise TrimtabError(
                f"results '{key}' is {obj[key]!r}, expected a non-empty string naming it. "
                f"{_PRODUCER_HINT}."
            )
    if "reference" not in obj:
        raise TrimtabError(f"results: missing key 'reference'. {_PRODUCER_HINT}.")
    _check_metrics("reference", obj["reference"], optional=False)
    _check_metrics("base", obj.get("base"), optional=True)
    runs = obj.get("runs")
    if not isinstance(runs, list):
        raise TrimtabError(
            f"results 'runs' is {type(runs).__name__ if 'runs' in obj else 'missing'}, "
            f"expected a list of runs. {_PRODUCER_HINT}."
        )
    seen: dict[tuple[Any, ...], int] = {}
    for index, run in enumerate(runs):
        _check_run(index, run)
        ident = (run["method"], run["scenario"], run["task"], run["seed"])
        if ident in seen:
            raise TrimtabError(
                f"{_run_label(index, run)} repeats run {seen[ident]}: same method, scenario, "
                f"task and seed. Drop one of them, or give repeats distinct seeds."
            )
        seen[ident] = index


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same directory and os.replace.

    Readers see either the old file or the whole new one, never a partial write; on any error
    the temp file is removed and an existing file at `path` is left untouched. Creates missing
    parent directories.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644  # mkstemp makes 0600 files; results are meant to be shared and read.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return target


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text (see write_bytes_atomic)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    # Configs often carry Paths, and metrics numpy or torch scalars; store them as plain JSON.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    item = getattr(value, "item", None)
    if callable(item):
        with contextlib.suppress(Exception):
            return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(obj: Any, path: str | os.PathLike[str] = "the file") -> str:
    """`obj` as indented, strict JSON (no NaN), or a TrimtabError naming `path`: callers
    that write a file after other outputs can check it first."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TrimtabError(
            f"cannot write {path} as JSON: {exc}. Pass only numbers, strings, lists, dicts, "
            f"booleans and None (no NaN or infinity)."
        ) from exc


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write `obj` as indented, strict JSON (no NaN) with a trailing newline.

    The object is serialized before anything touches the disk, so an unserializable value
    raises TrimtabError and writes nothing.
    """
    return write_text_atomic(path, json_text(obj, path) + "\n")


def check_out_folder(out: str | os.PathLike[str]) -> Path:
    """Refuse an output folder that is a file or cannot be written, before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrimtabError(f"--out {out} is a file; give a folder for the results.")
    probe = out if out.exists() else next(p for p in out.resolve().parents if p.exists())
    if not probe.is_dir() or not os.access(probe, os.W_OK):  # e.g. --out file.yaml/sub
        raise TrimtabError(f"cannot write to {probe}; choose another --out folder.")
    return out


def check_out_file(out: str | os.PathLike[str], flag: str = "--out", *,
                   inputs: Sequence[str | os.PathLike[str] | None] = (),
                   earlier: Callable[[Path], bool] | None = None,
                   kind: str = "output", label: str | None = None) -> Path:
    """Refuse an output file that is a folder, cannot be written, or is (inside) one of the
    `inputs`, before any work. With `earlier`, an existing file is replaced only when
    `earlier(path)` says it is a previous output of this kind (not a model's config.json).
    `label` names the file in messages when it is not the flag's value itself."""
    out = Path(out)
    what = label or f"{flag} {out}"
    for given in inputs:
        if given is None or not Path(given).exists():
            continue
        where = Path(given).resolve()
        if where == out.resolve() or (where.is_dir() and where in out.resolve().parents):
            raise TrimtabError(f"{what} would write {'into ' if where.is_dir() else ''}the "
                               f"input {given}; inputs are never overwritten. Choose another "
                               f"{flag}.")
    if out.is_dir():
        raise TrimtabError(f"{flag} {out} is a folder; give a file name such as metrics.json.")
    probe = next(p for p in out.resolve().parents if p.exists())
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise TrimtabError(f"cannot write {out} (in {probe}); choose another {flag} file.")
    if earlier is not None and out.is_file() and not earlier(out):
        raise TrimtabError(f"{what} exists and is not a {kind}; choose another {flag} "
                           f"(only an earlier {kind} is replaced).")
    return out


def accepted_by(load: Callable[[Path], Any]) -> Callable[[Path], bool]:
    """An `earlier` test for `check_out_file`: whether `load` reads the file without a
    `TrimtabError` (an earlier probe, token set, ...)."""
    def test(path: Path) -> bool:
        try:
            load(path)
        except TrimtabError:
            return False
        return True

    return test


def json_object_with(path: Path, key: str) -> bool:
    """Whether `path` holds a JSON object with `key`: how an earlier output of one of our
    commands is told from a user's file of the same name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data


def is_metrics_file(path: Path) -> bool:
    """Whether `path` holds metrics as `trimtab evaluate --out` writes them."""
    return json_object_with(path, "harmful_rate")


def write_results(out_dir: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Validate `results`, then write results.json, report.md and safety_utility.png.

    Validation comes first, so invalid results write nothing (not even the directory).
    results.json is written before the report and plot, so the data survives even if drawing
    fails. Returns the path of results.json.
    """
    validate_results(results)
    from trimtab.evaluation import report  # here, not at the top: report imports this module

    out = Path(out_dir)
    results_path = write_json_atomic(out / RESULTS_NAME, results)
    write_text_atomic(out / REPORT_NAME, report.render_markdown(results))
    report.plot_safety_utility(results, out / PLOT_NAME)
    return results_path


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a results file; `path` may be the file or the directory holding it."""
    target = Path(path)
    if target.is_dir():
        target = target / RESULTS_NAME
    if not target.is_file():
        raise TrimtabError(
            f"no results file at {target}. Check the path, or run the evaluation first; it "
            f"writes {RESULTS_NAME} into its output directory."
        )
    try:
        obj = json.loads(target.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TrimtabError(f"cannot read {target}: {exc}; check its permissions.") from exc
    except UnicodeDecodeError as exc:
        raise TrimtabError(
            f"{target} is not a UTF-8 text file ({exc}); point at the {RESULTS_NAME} that "
            f"trimtab wrote."
        ) from exc
    except json.JSONDecodeError as exc:
        raise TrimtabError(
            f"{target} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}). "
            f"It was probably edited by hand or copied incompletely; restore it or rerun the "
            f"evaluation."
        ) from exc
    try:
        validate_results(obj)
    except TrimtabError as exc:
        raise TrimtabError(f"{target}: {exc}") from exc
    return obj
