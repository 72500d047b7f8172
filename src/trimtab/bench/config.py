"""The benchmark's YAML: which methods, scenarios, tasks and seeds, and how to train them.

A config is a list of grid blocks, each a product methods x scenarios x tasks x seeds, so a
benchmark can run every scenario on one seed and the headline scenarios on three without
paying for the whole product. Everything is checked when the file is read, before any
training starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trimtab.config import (
    REQUIRED,
    SEED_MAX,
    CheckedConfig,
    config_from_mapping,
    config_to_dict,
    option,
    read_yaml_mapping,
)
from trimtab.errors import TrimtabError
from trimtab.evaluation.results import TASKS, harmful_fraction, is_valid_scenario, json_text

SCENARIO_HELP = "benign, harmful-<p> (0 < p < 1), adversarial or unsafe-init"


@dataclass
class GridBlock(CheckedConfig):
    methods: list[str] = option(REQUIRED, "methods; `a+b` composes, `a+recover` adds a "
                                          "post-hoc step")
    scenarios: list[str] = option(REQUIRED, SCENARIO_HELP)
    tasks: list[str] = option(["general"], "downstream tasks", choices=TASKS)
    seeds: list[int] | None = option(None, "fine-tuning seeds (default: the config's seeds)", min=0,
                                     max=SEED_MAX)


@dataclass
class BenchConfig(CheckedConfig):
    grid: list[dict[str, Any]] = option(REQUIRED, "grid blocks: methods, scenarios, tasks, seeds")
    world: str = option("synthetic", "the world (the real-text world runs through "
                                     "`trimtab train`/`evaluate` for now)",
                        choices=("synthetic",))
    quick: bool = option(False, "the small world of `trimtab demo --quick` (for tests)")
    synthetic_world: dict[str, Any] = option({}, "SyntheticWorldConfig fields that override "
                                                 "the shipped world (`borderline_objects: 6` "
                                                 "is the world before the 9-object switch)")
    seeds: list[int] = option([0], "fine-tuning seeds of blocks that name none", min=0,
                              max=SEED_MAX)
    train: dict[str, Any] = option({}, "TrainConfig fields that override the demo's "
                                       "fine-tuning settings")
    methods: dict[str, dict[str, Any]] = option({}, "per method (or post-hoc step) name: "
                                                    "config fields that override its defaults")
    unsafe_init_fraction: float = option(0.1, "unsafe-init starts from sft fine-tuned at this "
                                              "harmful fraction and trains on the same mix",
                                         min=0.0, max=0.99)
    curves_scenario: str = option("harmful-0.1", "scenario whose training logs are drawn in "
                                                 "training_curves.png")
    blocks: list[GridBlock] = field(default_factory=list, init=False, repr=False)  # from `grid`


@dataclass(frozen=True)
class BenchCell:
    method: str
    scenario: str
    task: str
    seed: int

    @property
    def fraction(self) -> float | None:
        """Harmful fraction of the training mix; None for adversarial (harmful only)."""
        if self.scenario == "adversarial":
            return None
        if self.scenario == "benign":
            return 0.0
        return harmful_fraction(self.scenario)

    @property
    def file_name(self) -> str:
        return f"{self.task}__{self.scenario}__{self.method}__seed{self.seed}.json"


def load_bench_config(path: str | Path) -> BenchConfig:
    return parse_bench_config(read_yaml_mapping(path), source=str(path))


def parse_bench_config(mapping: dict[str, Any], source: str = "bench config") -> BenchConfig:
    """Strictly parse and check the whole config: names, scenarios and method settings."""
    from trimtab.pipeline import check_not_trained_on_oracle, split_method
    from trimtab.recovery import POSTHOC_STEPS

    config = config_from_mapping(BenchConfig, mapping, source=source)
    if not config.grid:
        raise TrimtabError(f"{source}: `grid` is empty; add a block with methods and scenarios.")
    blocks = []
    for i, raw in enumerate(config.grid):
        where = f"{source}, grid block {i + 1}"
        block = config_from_mapping(GridBlock, raw, source=where)
        if not block.methods or not block.scenarios or not block.tasks:
            raise TrimtabError(f"{where}: methods, scenarios and tasks must each list at least "
                               "one entry.")
        for method in block.methods:
            try:
                split_method(method)
            except TrimtabError as exc:
                raise TrimtabError(f"{where}: {exc}") from None
        for scenario in block.scenarios:
            check_scenario(scenario, where)
        blocks.append(replace(block, seeds=block.seeds or list(config.seeds)))
        if not blocks[-1].seeds:
            raise TrimtabError(f"{where}: no seeds (`seeds: []`), so the grid has no cells; "
                               "give at least one seed.")
    config.blocks = blocks
    check_scenario(config.curves_scenario, f"{source}, curves_scenario")
    train_config(config).check_trains()  # fail now on a bad train override, not after an hour
    world_config(config)
    known = {part for b in blocks for m in b.methods for part in m.split("+")}
    for name in config.methods:
        if name not in known:
            raise TrimtabError(f"{source}: `methods` configures {name!r}, which no grid block "
                               f"uses ({', '.join(sorted(known))}); fix the name or remove it.")
        try:  # the bench's judge is the synthetic world's oracle
            check_not_trained_on_oracle(name, method_config(config, name))
        except TrimtabError as exc:
            raise TrimtabError(f"{source}: {exc}") from None
    if any(s in POSTHOC_STEPS for s in known) and config.world != "synthetic":
        raise TrimtabError(f"{source}: post-hoc steps need the synthetic world's recovery data.")
    return config


def check_scenario(scenario: str, where: str) -> None:
    """A results-contract scenario; harmful-<p> with 0 < p < 1 (0 is `benign`, 1 is
    `adversarial`)."""
    p = harmful_fraction(scenario)
    if not is_valid_scenario(scenario) or (p is not None and not 0 < p < 1):
        raise TrimtabError(f"{where}: unknown scenario {scenario!r}; use {SCENARIO_HELP}.")


def cells(config: BenchConfig) -> list[BenchCell]:
    """Every cell of the grid once, in block order (a cell named by two blocks runs once)."""
    out: dict[BenchCell, None] = {}
    for block in config.blocks:
        for seed in block.seeds or []:  # filled from the config's seeds when parsed
            for task in block.tasks:
                for scenario in block.scenarios:
                    for method in block.methods:
                        out[BenchCell(method, scenario, task, seed)] = None
    return list(out)


def world_config(config: BenchConfig) -> Any:
    """The synthetic world the grid runs on: the demo's, with `synthetic_world` applied. The
    cells' fingerprints name the references it builds, so cells stored from another world
    are stale: refused, or rerun with --overwrite."""
    from trimtab.demo import world_configs
    from trimtab.worlds.synthetic.generator import SyntheticWorldConfig

    base, _ = world_configs(config.quick)
    if not config.synthetic_world:
        return base
    return config_from_mapping(SyntheticWorldConfig,
                               {**config_to_dict(base), **config.synthetic_world},
                               source="bench config `synthetic_world`")


def train_config(config: BenchConfig) -> Any:
    from trimtab.demo import DEMO_TRAIN, QUICK_TRAIN
    from trimtab.training.config import TrainConfig

    if "seed" in config.train:  # run_cell sets each cell's seed: this one would be ignored
        raise TrimtabError("the bench config's `train` sets seed, but each cell's seed comes "
                           "from `seeds:` (or a block's seeds); remove it from `train`.")
    base = QUICK_TRAIN if config.quick else DEMO_TRAIN
    merged = {**config_to_dict(base), "progress": False, **config.train}
    return config_from_mapping(TrainConfig, merged, source="bench config `train`")


def method_config(config: BenchConfig, name: str) -> Any | None:
    """The config object of method (or post-hoc step) `name`: defaults plus the overrides."""
    from trimtab.objectives.registry import METHODS
    from trimtab.recovery import SYNTHETIC_POSTHOC

    overrides = config.methods.get(name)
    if name in SYNTHETIC_POSTHOC:
        default = SYNTHETIC_POSTHOC[name]
        if not overrides:
            return default
        return config_from_mapping(type(default), {**config_to_dict(default), **overrides},
                                   source=f"bench config `methods.{name}`")
    if not overrides:
        return None
    return config_from_mapping(METHODS[name].config_class, overrides,
                               source=f"bench config `methods.{name}`")


def changed_settings(config: BenchConfig) -> dict[str, dict[str, Any]]:
    """What the grid changes from the shipped world, the demo's fine-tuning and each method's
    defaults, by part (`world`, `train`, method names): the settings the report must name.
    A setting written out with its default value changes nothing and is left out."""
    from trimtab.demo import DEMO_TRAIN, QUICK_TRAIN, world_configs
    from trimtab.objectives.registry import METHODS
    from trimtab.recovery import SYNTHETIC_POSTHOC

    def changed(keys: Any, built: Any, default: Any) -> dict[str, Any]:
        if not keys:  # `methods: {pact: {}}` builds no config
            return {}
        now, before = config_to_dict(built), config_to_dict(default)
        return {k: now[k] for k in keys if now[k] != before[k]}

    train_default = replace(QUICK_TRAIN if config.quick else DEMO_TRAIN, progress=False)
    parts = {"world": changed(config.synthetic_world, world_config(config),
                              world_configs(config.quick)[0]),
             "train": changed(config.train, train_config(config), train_default)}
    for name, overrides in config.methods.items():
        default = (SYNTHETIC_POSTHOC[name] if name in SYNTHETIC_POSTHOC
                   else METHODS[name].config_class())
        parts[name] = changed(overrides, method_config(config, name), default)
    return {part: values for part, values in parts.items() if values}


def objective_config(config: BenchConfig, objective: str) -> Any | None:
    """What `build_objective` takes: one config, or one per part of a composed method."""
    parts = objective.split("+")
    if len(parts) == 1:
        return method_config(config, objective)
    return {p: c for p in parts if (c := method_config(config, p)) is not None}


def cell_settings(config: BenchConfig, cell: BenchCell) -> dict[str, Any]:
    """Every setting a cell trains with, defaults resolved, as `run_cell` records it under
    `config`. The fingerprint covers what the bench config sets; this also catches a cell
    whose method defaults have changed in the code since it ran."""
    from trimtab.objectives.registry import build_objective
    from trimtab.pipeline import recorded_config, seeded, split_method

    objective, step = split_method(cell.method)
    settings = recorded_config(
        build_objective(objective, objective_config(config, objective)).config,
        seeded(train_config(config), cell.seed))
    if step:
        settings[step] = config_to_dict(method_config(config, step))
    return json.loads(json_text(settings))  # exactly as a stored cell reads back


def fingerprint(config: BenchConfig, cell: BenchCell, world_key: str) -> str:
    """What a finished cell's result depends on; a stored cell with another one is stale."""
    from trimtab.pipeline import split_method

    objective, step = split_method(cell.method)
    parts = [*objective.split("+"), *([step] if step else [])]
    data = {"cell": [cell.method, cell.scenario, cell.task, cell.seed], "world": world_key,
            "train": config_to_dict(train_config(config)),
            "methods": {p: config.methods.get(p, {}) for p in parts}}
    if cell.scenario == "unsafe-init":
        data["unsafe_init_fraction"] = config.unsafe_init_fraction
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
