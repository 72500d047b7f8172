"""`trimtab demo`: the problem and the baselines, measured, on the embedded synthetic world.

Builds (or loads) the base and aligned reference models, fine-tunes the aligned reference
with each method on the general downstream task at each harmful fraction, evaluates every
model with the world's oracle, and writes `results.json`, `report.md` and
`safety_utility.png`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from trimtab.demo_config import DemoConfig
from trimtab.errors import TrimtabError
from trimtab.evaluation.report import render_table
from trimtab.evaluation.results import check_out_folder, json_object_with, write_results
from trimtab.pipeline import Cell, model_metrics, run_cell, split_method
from trimtab.training.config import TrainConfig
from trimtab.worlds.synthetic.build import ReferenceBuildConfig, build_references
from trimtab.worlds.synthetic.generator import SyntheticWorld, SyntheticWorldConfig
from trimtab.worlds.synthetic.suite import synthetic_suite

# A smaller world and shorter training: the same pipeline in a minute or two, for tests. It
# keeps 6 objects per borderline phrase (fewer prompts, and the tests' thresholds were set on it).
QUICK_WORLD = SyntheticWorldConfig(n_known_entities=16, n_unknown_train=8, n_unknown_eval=8,
                                   n_planets=8, n_unknown_planets=4, n_list_train=600,
                                   n_eval=30, n_harmful_finetune=40, n_task_train=400,
                                   borderline_objects=6)
QUICK_BUILD = ReferenceBuildConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=3,
                                   base_epochs=10.0, aligned_epochs=8.0)
# Fine-tuning hyper-parameters of the demo: enough to learn the task on the tiny model.
# A modest learning rate, as in real fine-tuning: the task is learned (accuracy > 0.85) while
# the general skills are mostly kept, so what drifts is alignment, not everything at once.
DEMO_TRAIN = TrainConfig(learning_rate=1e-4, num_train_epochs=8.0,
                         per_device_train_batch_size=32, logging_steps=10)
QUICK_TRAIN = replace(DEMO_TRAIN, learning_rate=5e-4, num_train_epochs=4.0)


def world_configs(quick: bool) -> tuple[SyntheticWorldConfig, ReferenceBuildConfig]:
    return (QUICK_WORLD, QUICK_BUILD) if quick else (SyntheticWorldConfig(),
                                                     ReferenceBuildConfig())


def run_demo(config: DemoConfig) -> dict[str, Any]:
    check_demo_config(config)  # fail on bad input before minutes of building
    world_config, build_config = world_configs(config.quick)
    started = time.perf_counter()
    refs = build_references(world_config, build_config, progress=config.progress)
    world = SyntheticWorld(world_config)
    suite = synthetic_suite(world, config.task)
    train = replace(QUICK_TRAIN if config.quick else DEMO_TRAIN, progress=False)
    results: dict[str, Any] = {
        "world": "synthetic",
        "model": f"synthetic-aligned-{refs.root.name}",  # the cache key: stable across machines
        "model_path": str(refs.aligned),
        "world_config": asdict(world_config),
        "build_config": asdict(build_config),
        "reference_build_seconds": refs.build_seconds,
        "reference": _metrics_only(model_metrics(refs.aligned, suite, config.progress)),
        "base": _metrics_only(model_metrics(refs.base, suite, config.progress)),
        "runs": [],
    }
    cells = [Cell(m, f, config.task, config.seed) for f in config.fractions
             for m in config.methods]
    bar = tqdm(cells, desc="fine-tuning", disable=not config.progress)
    for cell in bar:
        bar.set_postfix_str(f"{cell.method} {cell.scenario}")
        results["runs"].append(run_cell(world, refs.aligned, cell, suite, train,
                                        progress=config.progress, base=refs.base))
    results["demo_seconds"] = round(time.perf_counter() - started, 1)
    write_results(config.out, results)
    return results


def check_demo_config(config: DemoConfig) -> None:
    for name in config.methods:
        split_method(name)  # `x+step`: method x, then a post-hoc step
    for what, values in (("methods", config.methods), ("fractions", config.fractions)):
        if not values:
            raise TrimtabError(f"--{what} is empty: nothing would run. Give at least one, or "
                               "leave it out for the defaults.")
        if len(set(values)) != len(values):
            raise TrimtabError(f"--{what} lists a value twice ({values}); give each once.")
    out = check_out_folder(config.out)
    clashing = [name for name in DEMO_FILES if (out / name).exists()]
    # the demo writes these three, nothing else; an earlier demo's results has demo_seconds
    if clashing and not json_object_with(out / "results.json", "demo_seconds"):
        raise TrimtabError(f"--out {out} holds {', '.join(clashing)} of something other than "
                           "an earlier demo (its results.json has no demo_seconds); the demo "
                           "would overwrite them. Choose another --out.")


DEMO_FILES = ("results.json", "report.md", "safety_utility.png")


def _metrics_only(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "samples"}


def print_summary(results: dict[str, Any], out: str | Path) -> None:
    print(render_table(results))
    print(f"\nwrote {Path(out) / 'results.json'}, report.md and safety_utility.png "
          f"({results['demo_seconds']} s)")
