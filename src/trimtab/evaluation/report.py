"""Turn a results object into what people read: a Markdown report, a terminal table, a plot.

Everything here reads the results contract of `trimtab.evaluation.results` and nothing else, so
a report can be redrawn from any saved results.json without rerunning an experiment.
"""

from __future__ import annotations

import io
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trimtab.evaluation.results import COST_KEYS, RATE_KEYS, TASKS, harmful_fraction

BASELINE_METHOD = "sft"
# An extra rate, shown where a run or the reference has it: the downstream task's own
# unanswerable questions (the synthetic domain task's unknown planets).
TASK_HALLUCINATION = "task_hallucination_rate"
SUMMARY_METRICS: tuple[str, ...] = (*RATE_KEYS, TASK_HALLUCINATION, *COST_KEYS)

# Column headings: (Markdown, terminal) for each rate, in RATE_KEYS order.
_RATE_HEADINGS: dict[str, tuple[str, str]] = {
    "harmful_rate": ("harmful ↓", "harmful"),
    "jailbreak_harmful_rate": ("jailbreak ↓", "jailbrk"),
    "hallucination_rate": ("hallucination ↓", "halluc"),
    "over_refusal_rate": ("over-refusal ↓", "refusal"),
    "task_accuracy": ("task acc ↑", "task acc"),
    "retained_accuracy": ("retained acc ↑", "retained"),
    TASK_HALLUCINATION: ("task halluc ↓", "taskhal"),
}
_RATIO_HEADINGS: dict[str, tuple[str, str]] = {
    "time_ratio": ("time ×sft ↓", "time×sft"),
    "memory_ratio": ("memory ×sft ↓", "mem×sft"),
}
_MISSING = "—"

_LEGEND = """\
What the columns mean (↓ lower is better, ↑ higher is better):

- **harmful ↓**: fraction of plainly harmful requests the model complied with.
- **jailbreak ↓**: the same, for harmful requests wrapped in jailbreak prompts.
- **hallucination ↓**: fraction of unanswerable questions answered with made-up facts instead \
of an abstention.
- **over-refusal ↓**: fraction of benign requests (some with alarming words) the model refused.
- **task acc ↑**: accuracy on the task being fine-tuned.
- **retained acc ↑**: accuracy on general tasks the reference model could do; a drop means \
forgetting.
{task_halluc}- **time ×sft ↓, memory ×sft ↓**: mean training time and peak memory divided by \
those of plain `sft` in the same scenario and task (1.00 for `sft` itself; — when there is no \
`sft` run to compare with).
- **seeds**: number of seeds averaged; with more than one, cells read mean ± sample standard \
deviation.
- **reference** is the aligned model before fine-tuning, the standard to keep; **base**, \
where a world has one, is the model before alignment.
- Scenarios: `benign` fine-tunes on clean task data; `harmful-<p>` mixes in a fraction p of \
harmful examples; `adversarial` fine-tunes on harmful examples only; `unsafe-init` \
starts from a model that already lost its alignment (recovery). A method named `x+y` is \
method x followed by the post-hoc step y (`sft+recover`) or, when y is a method too, x's \
loss plus y's penalty term in one training run (`pact+gated`).
"""


# ---------------------------------------------------------------------------------------------
# Summary


def _scenario_order(scenario: str) -> tuple[int, float, str]:
    """Benign first, then harmful-<p> by rising p, then adversarial and unsafe-init."""
    if scenario == "benign":
        return (0, 0.0, scenario)
    p = harmful_fraction(scenario)
    if p is not None:
        return (1, p, scenario)
    fixed = {"adversarial": 2, "unsafe-init": 3}
    return (fixed.get(scenario, 4), 0.0, scenario)


def _task_order(task: str) -> tuple[int, str]:
    return (TASKS.index(task) if task in TASKS else len(TASKS), task)


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline <= 0 or not math.isfinite(baseline):
        return None
    return value / baseline


def group_runs(runs: Iterable[Mapping[str, Any]]
               ) -> dict[tuple[str, str, str], list[Mapping[str, Any]]]:
    """The runs by (method, scenario, task), in order of first appearance: a row's seeds."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((str(run["method"]), str(run["scenario"]), str(run["task"])),
                          []).append(run)
    return groups


def summarize_runs(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Average runs over seeds, one row per (method, scenario, task).

    Each row has `method`, `scenario`, `task`, `n` (number of runs averaged), `seeds` (sorted),
    and for every metric in SUMMARY_METRICS (RATE_KEYS, the task hallucination rate where runs
    have it, COST_KEYS) its mean under the metric's own name and its
    *sample* standard deviation (ddof=1, the unbiased estimate across seeds, since seeds are a
    sample of possible runs) under `<metric>_std`; the std is None when n is 1.
    `time_ratio` and `memory_ratio` are the mean train_seconds and peak_memory_mb divided by
    those of method `sft` in the same scenario and task (None when there is no such sft row or
    its cost is 0), so the cost of a method reads directly as a multiple of plain fine-tuning.

    Rows are ordered by task (general, domain), scenario (benign, harmful-<p> by rising p,
    adversarial, unsafe-init), then method in order of first appearance.
    """
    groups = group_runs(runs)
    method_rank = {}
    for method, _, _ in groups:
        method_rank.setdefault(method, len(method_rank))

    rows: list[dict[str, Any]] = []
    for (method, scenario, task), members in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "scenario": scenario,
            "task": task,
            "n": len(members),
            "seeds": sorted(run.get("seed") for run in members),
        }
        for metric in SUMMARY_METRICS:
            values = [float(run[metric]) for run in members if run.get(metric) is not None]
            mean, std = _mean_std(values) if values else (None, None)
            row[metric] = mean
            row[f"{metric}_std"] = std
        rows.append(row)

    baselines = {(r["scenario"], r["task"]): r for r in rows if r["method"] == BASELINE_METHOD}
    for row in rows:
        base = baselines.get((row["scenario"], row["task"]))
        row["time_ratio"] = _ratio(row["train_seconds"], base and base["train_seconds"])
        row["memory_ratio"] = _ratio(row["peak_memory_mb"], base and base["peak_memory_mb"])

    rows.sort(
        key=lambda r: (
            _task_order(r["task"]),
            _scenario_order(r["scenario"]),
            method_rank[r["method"]],
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------
# Text


def _fmt(mean: Any, std: Any = None, n: int = 1, *, sep: str = " ± ") -> str:
    if mean is None:
        return _MISSING
    if n > 1 and std is not None:
        return f"{float(mean):.3f}{sep}{float(std):.3f}"
    return f"{float(mean):.3f}"


def _fmt_ratio(value: Any) -> str:
    return _MISSING if value is None else f"{float(value):.2f}"


def _reference_rows(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    rows = [("reference", results.get("reference") or {})]
    if results.get("base") is not None:
        rows.append(("base", results["base"]))
    return rows


def _shown_rates(results: Mapping[str, Any], summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """RATE_KEYS, and the task's own hallucination rate where anything reports it."""
    models = [m for _, m in _reference_rows(results)]
    extra = any(r.get(TASK_HALLUCINATION) is not None for r in (*summary, *models))
    return [*RATE_KEYS, *((TASK_HALLUCINATION,) if extra else ())]


def _legend(rates: Sequence[str]) -> str:
    line = ("- **task halluc ↓**: fraction of the task's own unanswerable questions (the "
            "domain task's unknown planets) answered instead of abstained on.\n")
    return _LEGEND.format(task_halluc=line if TASK_HALLUCINATION in rates else "")


def _run_cells(row: Mapping[str, Any], sep: str, rates: Sequence[str]) -> list[str]:
    cells = [_fmt(row[k], row[f"{k}_std"], row["n"], sep=sep) for k in rates]
    return cells + [_fmt_ratio(row["time_ratio"]), _fmt_ratio(row["memory_ratio"])]


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int) -> str:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# What each method logs about itself that a reader of the report needs (DESIGN.md asks for
# gated's gate distribution): means over the logged steps of `<method>/<key>`.
DIAGNOSTICS: dict[str, tuple[tuple[str, str], ...]] = {
    "gated": (("pregated", "pre-gated"), ("gate", "mean gate"), ("gate_open", "gate > 0.5"),
              ("abstained", "abstained"), ("signal", "mean signal of samples")),
    "risk-kl": (("risk", "mean risk"), ("beta", "mean beta")),
    "pact": (("safety_kl", "safety-token KL"), ("top_agree", "top safety token as reference"),
             ("mass_risk", "mass critic's risk where the term applies")),
    "kl": (("kl", "KL to reference"),),
    "soft-sft": (("log_ratio", "log ratio to reference"),),
}


def training_diagnostics(runs: Iterable[Mapping[str, Any]]) -> list[list[str]]:
    """Rows (method, scenario, task, seeds, what the method logged): each DIAGNOSTICS value
    of a method (or of a part of a composed one) averaged over logged steps, then seeds."""
    rows = []
    for (method, scenario, task), members in group_runs(runs).items():
        cells = []
        for part in method.split("+"):
            part = part.split("[")[0]  # a benchmark's variant, `pact[lam=2]`, logs as `pact`
            for key, label in DIAGNOSTICS.get(part, ()):
                name = f"{part}/{key}"
                per_run = [statistics.fmean(values) for run in members
                           if (values := [h[name] for h in run.get("log_history") or []
                                          if isinstance(h.get(name), int | float)])]
                if per_run:
                    cells.append(f"{label} {statistics.fmean(per_run):.3f}")
        if cells:
            rows.append([method, scenario, task, str(len(members)), "; ".join(cells)])
    return rows


def render_markdown(results: Mapping[str, Any]) -> str:
    """The report.md text: title, reference/base table, runs table (seed means) and a legend."""
    summary = summarize_runs(results.get("runs") or [])
    rates = _shown_rates(results, summary)
    rate_heads = [_RATE_HEADINGS[k][0] for k in rates]
    ratio_heads = [h for h, _ in _RATIO_HEADINGS.values()]
    parts = [
        f"# trimtab results: world `{results.get('world')}`, model `{results.get('model')}`",
        "## Reference and base",
        _md_table(
            ["model", *rate_heads],
            [[name, *(_fmt(m.get(k)) for k in rates)] for name, m in _reference_rows(results)],
            right_from=1,
        ),
        "## Runs",
    ]
    if summary:
        parts.append(
            _md_table(
                ["method", "scenario", "task", "seeds", *rate_heads, *ratio_heads],
                [
                    [r["method"], r["scenario"], r["task"], str(r["n"]),
                     *_run_cells(r, " ± ", rates)]
                    for r in summary
                ],
                right_from=3,
            )
        )
    else:
        parts.append("No runs recorded.")
    diagnostics = training_diagnostics(results.get("runs") or [])
    if diagnostics:
        parts += ["## Training diagnostics",
                  "What each method logged about itself, averaged over the logged steps and "
                  "then the seeds (for `gated`: the share of rows pre-gated, the mean gate, the "
                  "share with the gate open, the share trained on an abstention, the mean "
                  "signal score of its samples).",
                  _md_table(["method", "scenario", "task", "seeds", "means over training"],
                            diagnostics, right_from=3)]
    parts += ["## Legend", _legend(rates).rstrip("\n")]
    return "\n\n".join(parts) + "\n"


def render_table(results: Mapping[str, Any]) -> str:
    """A fixed-width plain-text table for the terminal: reference, base, then the run means."""
    summary = summarize_runs(results.get("runs") or [])
    rates = _shown_rates(results, summary)
    header = [
        "method",
        "scenario",
        "task",
        "n",
        *(_RATE_HEADINGS[k][1] for k in rates),
        *(t for _, t in _RATIO_HEADINGS.values()),
    ]
    rows = [
        [name, _MISSING, _MISSING, _MISSING, *(_fmt(m.get(k)) for k in rates), "", ""]
        for name, m in _reference_rows(results)
    ]
    body = [
        [r["method"], r["scenario"], r["task"], str(r["n"]), *_run_cells(r, "±", rates)]
        for r in summary
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, *body, strict=True)]
    text_columns = 3  # method, scenario, task align left; numbers align right

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < text_columns else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [f"world {results.get('world')}, model {results.get('model')}", line(header), rule]
    out += [line(r) for r in rows]
    if body:
        out.append(rule)
        out += [line(r) for r in body]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Plot

# Colors (one per scenario) and markers (one per method); "*" is kept for reference and base.
_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d")
_AXIS_LIMITS = (-0.03, 1.03)


def _draw_anchor(ax: Any, name: str, metrics: Mapping[str, Any], filled: bool) -> None:
    """Mark reference or base: a labelled star, or a labelled line when task accuracy is unknown."""
    harmful = metrics.get("harmful_rate")
    if harmful is None:
        return
    accuracy = metrics.get("task_accuracy")
    face = "black" if filled else "white"
    if accuracy is None:
        ax.axhline(harmful, color="black", lw=0.8, ls="--" if filled else ":", zorder=1)
        ax.annotate(
            name,
            (1.0, harmful),
            xycoords=("axes fraction", "data"),
            xytext=(-3, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
        return
    ax.plot([accuracy], [harmful], marker="*", ms=15, mfc=face, mec="black", ls="none", zorder=4)
    ax.annotate(name, (accuracy, harmful), xytext=(7, 5), textcoords="offset points", fontsize=8)


def plot_safety_utility(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Save the safety/utility scatter (x task accuracy, y harmful rate) as a PNG at `path`.

    One point per method and scenario, seed means with std error bars when there are several
    seeds; one panel per task; reference and base as labelled stars (or lines when their task
    accuracy is unknown). Uses a bare Figure (no pyplot, no global backend state) and an atomic
    write, so it is safe in threads and in headless jobs.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from trimtab.evaluation.results import write_bytes_atomic

    summary = summarize_runs(results.get("runs") or [])
    tasks = sorted({r["task"] for r in summary}, key=_task_order) or ["general"]
    scenarios = sorted({r["scenario"] for r in summary}, key=_scenario_order)
    methods = list(dict.fromkeys(r["method"] for r in summary))
    color = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(scenarios)}
    marker = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(methods)}

    fig = Figure(figsize=(4.8 * len(tasks) + 2.4, 4.6))
    axes = fig.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        for row in (r for r in summary if r["task"] == task):
            x, y = row["task_accuracy"], row["harmful_rate"]
            if x is None or y is None:
                continue
            several = row["n"] > 1
            ax.errorbar(
                x,
                y,
                xerr=row["task_accuracy_std"] if several else None,
                yerr=row["harmful_rate_std"] if several else None,
                marker=marker[row["method"]],
                color=color[row["scenario"]],
                mec="black",
                mew=0.5,
                ms=8,
                ls="none",
                elinewidth=1,
                capsize=3,
                alpha=0.9,
                zorder=3,
            )
        _draw_anchor(ax, "reference", results.get("reference") or {}, filled=True)
        if results.get("base") is not None:
            _draw_anchor(ax, "base", results["base"], filled=False)
        ax.set_xlim(*_AXIS_LIMITS)
        ax.set_ylim(*_AXIS_LIMITS)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("task accuracy (higher is better →)")
        ax.set_title(f"task: {task}" if summary else "no runs recorded", fontsize=10)
    axes[0].set_ylabel("harmful rate (lower is better ↓)")
    fig.suptitle(f"Safety vs utility: {results.get('world')} / {results.get('model')}")

    handles: list[Any] = [
        Line2D([], [], ls="none", marker=marker[m], color="0.5", mec="black", label=m)
        for m in methods
    ]
    handles += [
        Line2D([], [], ls="none", marker="o", color=color[s], mec="black", label=s)
        for s in scenarios
    ]
    anchors = [("reference", "black")]
    if results.get("base") is not None:
        anchors.append(("base", "white"))
    handles += [
        Line2D([], [], ls="none", marker="*", ms=12, mfc=face, mec="black", label=name)
        for name, face in anchors
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=8,
            title="marker = method\ncolor = scenario",
            title_fontsize=8,
            frameon=False,
        )
    fig.tight_layout()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())
