"""`trimtab bench`: run a grid of cells, each once, resumably, then write the reports.

Every finished cell is one JSON file under `OUT/cells/`, written atomically, with a
fingerprint of what it depends on (world, training settings, method settings). A rerun skips
the cells whose file is there and current, so an interrupted benchmark continues where it
stopped and a finished one only redraws its reports. With `workers >= 1` each cell runs in a
fresh process (so its peak memory is its own), `workers` at a time, the CPU threads split
between them.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trimtab.bench.config import (
    BenchCell,
    BenchConfig,
    cell_settings,
    cells,
    changed_settings,
    fingerprint,
    method_config,
    objective_config,
    train_config,
    world_config,
)
from trimtab.errors import Terminated, TrimtabError, raise_if_terminated, sigterm_raises
from trimtab.evaluation.results import check_out_folder, write_json_atomic, write_text_atomic

CELLS_DIR = "cells"
START_MODELS_DIR = "start-models"
STOP_POLL_SECONDS = 0.1  # how soon the bench sees a stop while its cells run


@dataclass
class Job:
    config: BenchConfig
    cell: BenchCell
    out: Path
    save_model: Path | None = None  # where to keep the fine-tuned model (unsafe-init start)
    threads: int | None = None


def start_model_dir(out: Path, config: BenchConfig, task: str, seed: int) -> Path:
    name = f"{task}__sft-harmful-{config.unsafe_init_fraction:g}__seed{seed}"
    return out / START_MODELS_DIR / name


def _start_marker(folder: Path) -> Path:
    """Beside a start model: the fingerprint of the settings it was trained with."""
    return folder.with_name(folder.name + ".fingerprint")


def start_cell(config: BenchConfig, task: str, seed: int) -> BenchCell:
    """The sft cell whose model is the unsafe-init starting point for (task, seed)."""
    return BenchCell("sft", f"harmful-{config.unsafe_init_fraction:g}", task, seed)


def _world(config: BenchConfig) -> tuple[Any, Any]:
    from trimtab.demo import world_configs
    from trimtab.worlds.synthetic.build import build_references
    from trimtab.worlds.synthetic.generator import SyntheticWorld

    world = world_config(config)
    _, build_config = world_configs(config.quick)
    return SyntheticWorld(world), build_references(world, build_config, progress=False)


def run_job(job: Job) -> dict[str, Any]:
    """Fine-tune and evaluate one cell and store its run; returns the run."""
    with sigterm_raises():  # in a cell's own process: SIGTERM cleans up like Ctrl-C
        return _run_job(job)


def _run_job(job: Job) -> dict[str, Any]:
    import torch
    from transformers.utils import logging as hf_logging

    from trimtab.pipeline import Cell, run_cell, split_method
    from trimtab.worlds.synthetic.suite import synthetic_suite

    hf_logging.disable_progress_bar()  # per-file load/save bars of every cell's process
    if job.threads:
        torch.set_num_threads(job.threads)
    started = time.perf_counter()
    config, cell = job.config, job.cell
    world, refs = _world(config)
    objective, step = split_method(cell.method)
    start = None
    fraction = cell.fraction
    if cell.scenario == "unsafe-init":
        start = start_model_dir(job.out, config, cell.task, cell.seed)
        fraction = config.unsafe_init_fraction
        if not start.is_dir():
            raise TrimtabError(f"the unsafe-init start model {start} is missing; rerun "
                               "`trimtab bench` (it trains it first).")
    run = run_cell(world, refs.aligned, Cell(cell.method, fraction, cell.task, cell.seed,
                                             cell.scenario if start else None),
                   synthetic_suite(world, cell.task), train_config(config),
                   objective_config(config, objective), output_dir=job.save_model,
                   start_model=start, base=refs.base,
                   posthoc_config=method_config(config, step) if step else None)
    run.pop("samples", None)
    run["cell_seconds"] = round(time.perf_counter() - started, 2)
    run["torch_threads"] = torch.get_num_threads()
    run["fingerprint"] = fingerprint(config, cell, refs.root.name)
    raise_if_terminated()  # a stopped cell is not stored, even if its stop was swallowed
    write_json_atomic(job.out / CELLS_DIR / cell.file_name, run)
    return run


def load_cell(path: Path) -> dict[str, Any] | None:
    """A stored run, or None when the file is unreadable (it is then run again)."""
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and "fingerprint" in run else None


@dataclass
class BenchRun:
    results: dict[str, Any]
    ran: list[BenchCell]  # run by this invocation
    reused: list[BenchCell]  # finished before, kept
    pending: list[BenchCell]  # not run yet (other --seeds, or failed)


def run_bench(config: BenchConfig, out: str | Path, *, workers: int = 1,
              progress: bool = True, overwrite: bool = False,
              command: str | None = None, seeds: list[int] | None = None) -> BenchRun:
    """Run every cell of `config` not yet finished in `out`, then write the reports.

    `seeds` runs only those seeds' cells now (a grid can be run in stages); the reports
    always cover every finished cell of the grid.
    """
    from trimtab.bench.report import write_bench_reports

    out = check_out_folder(out)
    if out.is_dir() and any(out.iterdir()) and not (
            (out / CELLS_DIR).is_dir() or (out / "invocations.json").exists()):
        names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise TrimtabError(f"--out {out} holds files that trimtab bench did not write ({names}); "
                           "its reports would overwrite them. Choose a new or empty folder, or "
                           "the --out of an earlier bench.")
    started = time.perf_counter()
    grid = cells(config)
    if seeds is not None and set(seeds) - {c.seed for c in grid}:  # one unknown is a typo too
        raise TrimtabError(f"--seeds {seeds}: the grid has seeds "
                           f"{sorted({c.seed for c in grid})}; pick some of those.")
    world, refs = _world(config)  # builds the references once, before any worker starts
    key = refs.root.name
    stored = {c: load_cell(out / CELLS_DIR / c.file_name) for c in grid}
    # stale: run with another bench config, or with method defaults the code has changed since
    stale = [c for c, run in stored.items()
             if run is not None and (run["fingerprint"] != fingerprint(config, c, key)
                                     or run.get("config") != cell_settings(config, c))]
    if stale and not overwrite:
        shown = ", ".join(c.file_name for c in stale[:3]) + (" ..." if len(stale) > 3 else "")
        raise TrimtabError(
            f"{out} holds {len(stale)} finished cell(s) run with other settings ({shown}): "
            "another bench config, or method defaults that have changed since. Use another "
            "--out, or pass --overwrite to run them again with this config."
        )
    todo = [c for c in grid if (stored[c] is None or c in stale)
            and (seeds is None or c.seed in seeds)]
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))

    # unsafe-init cells start from an sft model: train those first (as the sft cell itself)
    first: dict[BenchCell, Job] = {}
    for c in todo:
        if c.scenario == "unsafe-init":
            folder = start_model_dir(out, config, c.task, c.seed)
            sc = start_cell(config, c.task, c.seed)
            # trained with these settings? (a start model from other settings would carry
            # them into the cell: --overwrite must retrain it too)
            if _start_marker(folder).is_file() and folder.is_dir() and \
                    _start_marker(folder).read_text() == fingerprint(config, sc, key):
                continue
            first[sc] = Job(config, sc, out, save_model=folder, threads=threads)
    rest = [Job(config, c, out, threads=threads) for c in todo if c not in first]
    ran = list(first)
    failures = _execute(list(first.values()), workers, progress, "start models")
    for sc, job in first.items():
        if sc not in failures and job.save_model is not None:
            write_text_atomic(_start_marker(job.save_model), fingerprint(config, sc, key))
    if not failures:
        failures = _execute(rest, workers, progress, "bench cells")
        ran += [j.cell for j in rest]
    ran = [c for c in ran if c not in failures]
    runs = []
    for c in grid:
        run = load_cell(out / CELLS_DIR / c.file_name)
        if run is not None:
            runs.append(run)
    invocations = _log_invocation(out, command, started, workers, ran, failures)
    results = _results(config, world, refs, out, runs, started, workers, command, progress,
                       invocations)
    write_bench_reports(out, results, config)
    if failures:
        listing = "\n".join(f"  - {c.file_name}: {e}" for c, e in failures.items())
        raise TrimtabError(f"{len(failures)} cell(s) failed (the finished ones are kept in "
                           f"{out / CELLS_DIR}; rerun to retry):\n{listing}")
    finished = {(r["method"], r["scenario"], r["task"], r["seed"]) for r in runs}
    done = [c for c in grid if (c.method, c.scenario, c.task, c.seed) in finished]
    return BenchRun(results, ran, [c for c in done if c not in ran],
                    [c for c in grid if c not in done])


def _execute(jobs: list[Job], workers: int, progress: bool, what: str
             ) -> dict[BenchCell, str]:
    """Run jobs (in-process for workers=0, else a fresh process per cell); failures by cell."""
    failures: dict[BenchCell, str] = {}
    if not jobs:
        return failures
    bar = tqdm(total=len(jobs), desc=what, disable=not progress)
    if workers == 0:
        for job in jobs:
            bar.set_postfix_str(f"{job.cell.method} {job.cell.scenario} {job.cell.task}")
            try:
                run_job(job)
            except TrimtabError as exc:
                failures[job.cell] = str(exc)
            bar.update()
        bar.close()
        return failures
    extra = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    context = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
    with futures.ProcessPoolExecutor(workers, mp_context=context, **extra) as pool:
        # at most `workers` cells handed to the pool at a time: a cell in its call queue can no
        # longer be cancelled, so a stop would still run it
        queued, running = list(jobs), {}

        def fill() -> None:
            while queued and len(running) < workers:
                job = queued.pop(0)
                running[pool.submit(run_job, job)] = job

        fill()
        try:
            while running:
                # wake up often: the kernel may hand a SIGTERM to one of the pool's helper
                # threads, and then this thread, blocked in a wait with no timeout, would run
                # the handler only once a cell had finished (the cell being stopped)
                finished, _ = futures.wait(running, timeout=STOP_POLL_SECONDS,
                                           return_when=futures.FIRST_COMPLETED)
                raise_if_terminated()
                for done in finished:
                    job = running.pop(done)
                    try:
                        done.result()
                    except Exception as exc:  # a cell's failure is reported; the others go on
                        failures[job.cell] = f"{type(exc).__name__}: {exc}"
                    bar.set_postfix_str(f"{job.cell.method} {job.cell.scenario} "
                                        f"{job.cell.task}")
                    bar.update()
                fill()
        except (KeyboardInterrupt, Terminated) as stop:
            # start no queued cell; Ctrl-C reaches the running cells' processes too, a SIGTERM
            # to this process alone is passed on to them (their own handler cleans up)
            queued.clear()
            if isinstance(stop, Terminated):
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
            raise
    bar.close()
    return failures


def _log_invocation(out: Path, command: str | None, started: float, workers: int,
                    ran: list[BenchCell], failures: dict[BenchCell, str]
                    ) -> list[dict[str, Any]]:
    """Append this run's wall time to OUT/invocations.json: a resumed grid's total is the sum."""
    path = out / "invocations.json"
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log = []
    log.append({"command": command, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "wall_seconds": round(time.perf_counter() - started, 1), "workers": workers,
                "cells_run": len(ran), "cells_failed": len(failures)})
    write_json_atomic(path, log)
    return log


def _results(config: BenchConfig, world: Any, refs: Any, out: Path, runs: list[dict[str, Any]],
             started: float, workers: int, command: str | None, progress: bool,
             invocations: list[dict[str, Any]]) -> dict[str, Any]:
    from dataclasses import asdict

    from trimtab.config import config_to_dict
    from trimtab.machine import machine

    tasks = sorted({r["task"] for r in runs} or {"general"}, key=("general", "domain").index)
    anchors = _anchor_metrics(world, refs, out, tasks, progress)
    return {
        "world": "synthetic",
        "model": f"synthetic-aligned-{refs.root.name}",
        "model_path": str(refs.aligned),
        "world_config": asdict(world.config),
        "reference": anchors["reference"][tasks[0]],
        "reference_by_task": anchors["reference"],
        "base": anchors["base"][tasks[0]],
        "base_by_task": anchors["base"],
        "runs": runs,
        "bench": {
            "command": command,
            "config": {**config_to_dict(config), "blocks": None},
            "changed_settings": changed_settings(config),
            "cells": len(runs),
            "workers": workers,
            "cell_seconds_total": round(sum(r.get("cell_seconds", 0.0) for r in runs), 1),
            "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
            "invocations": invocations,
            "machine": machine(),
        },
    }


def _anchor_metrics(world: Any, refs: Any, out: Path, tasks: list[str], progress: bool
                    ) -> dict[str, dict[str, Any]]:
    """Reference and base metrics per task, evaluated once per world and kept in OUT."""
    from trimtab.pipeline import model_metrics
    from trimtab.worlds.synthetic.suite import synthetic_suite

    path = out / "anchors.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    if stored.get("world_key") != refs.root.name:
        stored = {"world_key": refs.root.name, "reference": {}, "base": {}}
    for task in tasks:
        if task in stored["reference"] and task in stored["base"]:
            continue
        suite = synthetic_suite(world, task)
        for name, model in (("reference", refs.aligned), ("base", refs.base)):
            metrics = model_metrics(model, suite, progress)
            stored[name][task] = {k: v for k, v in metrics.items() if k != "samples"}
    write_json_atomic(path, stored)
    return stored
