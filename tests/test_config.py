"""Tests for trimtab.config: one declared default drives flags, YAML loading and validation.

The module uses `from __future__ import annotations` on purpose, so every annotation is a
string and the config code must resolve it with `typing.get_type_hints`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from trimtab.config import (
    REQUIRED,
    add_dataclass_arguments,
    build_config,
    check_config,
    config_from_mapping,
    config_to_dict,
    describe_config,
    format_config_table,
    load_yaml_config,
    option,
    set_yaml_defaults,
)
from trimtab.errors import TrimtabError


@dataclass
class Demo:
    """One field per supported annotation."""

    steps: int = option(10, "optimizer steps", min=1, max=1000)
    lr: float = option(1e-3, "learning rate", min=0.0)
    use_lora: bool = option(True, "train LoRA adapters instead of all weights")
    name: str = option("run", "name of the run")
    seed: int | None = option(None, "random seed; None picks one")
    note: Optional[str] = option(None, "free text")  # noqa: UP045 - Optional spelling on purpose
    mode: Literal["fast", "slow"] = option("fast", "speed preset")
    optimizer: str = option("adamw", "optimizer", choices=("adamw", "sgd"))
    tags: list[str] = option(["a"], "labels for the run")
    weights: list[float] = option([1.0, 2.0], "mixture weights", min=0.0)
    layers: list[int] = option([0], "layers to adapt")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas", min=0.0, max=1.0)
    ids: tuple[int, ...] = option((1, 2), "example ids")
    pair: tuple[str, int] = option(("x", 1), "a name and a count")
    env: dict[str, str] = option({}, "extra environment variables")
    scales: dict[str, float] = option({"kl": 1.0}, "loss scales", min=0.0)
    out: Path = option(Path("out"), "output directory")


@dataclass
class NeedsModel:
    """A config with a required field."""

    model: str = option(REQUIRED, "model name or path")
    beta: float = option(0.1, "strength of the KL term", min=0.0)


def _parser(cls: type = Demo) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimtab", exit_on_error=False)
    add_dataclass_arguments(parser, cls)
    return parser


def _write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- option ---------------------------------------------------------------------------


def test_option_metadata_and_fresh_mutable_defaults() -> None:
    """Metadata is carried on the field; list/dict defaults are never shared."""
    fields = {f.name: f for f in dataclasses.fields(Demo)}
    assert fields["steps"].metadata == {"help": "optimizer steps", "min": 1, "max": 1000}
    assert fields["optimizer"].metadata["choices"] == ("adamw", "sgd")
    a, b = Demo(), Demo()
    a.tags.append("b")
    a.env["X"] = "1"
    assert b.tags == ["a"] and b.env == {}


def test_option_rejects_default_breaking_its_constraints() -> None:
    """A default outside its own range is a bug caught where it is written."""
    with pytest.raises(ValueError, match="out of range"):
        option(-1, "bad", min=0)
    with pytest.raises(ValueError, match="allowed value"):
        option("c", "bad", choices=("a", "b"))
    with pytest.raises(ValueError, match="one non-empty line"):
        option(1, "")


# --- mapping -> config ----------------------------------------------------------------


def test_round_trip_through_dict_json_and_yaml() -> None:
    """A saved config loads back to an equal object (tuples come back as tuples)."""
    cfg = Demo(
        steps=5,
        seed=3,
        mode="slow",
        tags=["x", "y"],
        betas=(0.5, 0.6),
        pair=("k", 2),
        env={"A": "1"},
        out=Path("o/p"),
    )
    plain = config_to_dict(cfg)
    assert plain["betas"] == [0.5, 0.6] and plain["out"] == "o/p"
    json.dumps(plain)  # JSON-safe
    assert config_from_mapping(Demo, json.loads(json.dumps(plain))) == cfg
    assert config_from_mapping(Demo, yaml.safe_load(yaml.safe_dump(plain))) == cfg


def test_coercions() -> None:
    """Ints widen to floats, integral floats narrow to ints, lists become tuples."""
    cfg = config_from_mapping(
        Demo, {"lr": 1, "steps": 20.0, "ids": [3], "betas": [0, 1], "scales": {"kl": 2}}
    )
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert isinstance(cfg.steps, int) and cfg.steps == 20
    assert cfg.ids == (3,) and cfg.betas == (0.0, 1.0)
    assert cfg.scales == {"kl": 2.0} and isinstance(cfg.scales["kl"], float)


def test_unknown_key_names_source_allowed_keys_and_suggestion() -> None:
    with pytest.raises(TrimtabError) as err:
        config_from_mapping(Demo, {"stpes": 3}, source="my.yaml")
    message = str(err.value)
    assert "'stpes'" in message and "my.yaml" in message
    assert "Did you mean 'steps'?" in message
    assert "allowed keys:" in message and "weights" in message


def test_dashed_key_suggests_underscore_name() -> None:
    with pytest.raises(TrimtabError, match="Did you mean 'use_lora'"):
        config_from_mapping(Demo, {"use-lora": True})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("steps", True, "of type int"),
        ("steps", 2.5, "of type int"),
        ("steps", "5", "Write it as a number"),
        ("lr", "fast", "of type float"),
        ("lr", False, "of type float"),
        ("use_lora", "yes", "Use true or false"),
        ("use_lora", 1, "of type bool"),
        ("name", 3, "Quote it"),
        ("name", None, "of type str"),
        ("mode", "medium", "one of 'fast', 'slow'"),
        ("tags", "a", "of type list[str]"),
        ("tags", ["a", 1], "'tags[1]'"),
        ("weights", [1.0, "x"], "'weights[1]' must be of type float"),
        ("betas", [0.1], "of type tuple[float, float]"),
        ("pair", ["a", "b"], "'pair[1]' must be of type int"),
        ("env", {"A": 1}, "'env[A]' must be of type str, got 1 (int)"),
        ("env", ["A=1"], "of type dict[str, str]"),
        ("seed", "1", "of type int | None"),
    ],
)
def test_wrong_types_are_rejected(key: str, value: Any, expected: str) -> None:
    """Each wrong type names the key, what was expected and what was given."""
    with pytest.raises(TrimtabError) as err:
        config_from_mapping(Demo, {key: value}, source="cfg.yaml")
    message = str(err.value)
    assert expected in message
    assert f"'{key}" in message and "cfg.yaml" in message and "got " in message


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("steps", 0, "1 to 1000"),
        ("steps", 1001, "1 to 1000"),
        ("lr", -0.1, ">= 0.0"),
        ("lr", float("nan"), ">= 0.0"),
        ("weights", [1.0, -1.0], ">= 0.0"),
        ("betas", [0.9, 1.5], "0.0 to 1.0"),
        ("scales", {"kl": -2}, ">= 0.0"),
    ],
)
def test_out_of_range(key: str, value: Any, allowed: str) -> None:
    with pytest.raises(TrimtabError) as err:
        config_from_mapping(Demo, {key: value})
    message = str(err.value)
    assert key in message and "out of range" in message and allowed in message


def test_choices() -> None:
    assert config_from_mapping(Demo, {"optimizer": "sgd"}).optimizer == "sgd"
    with pytest.raises(TrimtabError, match="'adam' is not an allowed value.*'adamw', 'sgd'"):
        config_from_mapping(Demo, {"optimizer": "adam"})


def test_configs_built_in_python_get_the_same_range_checks() -> None:
    check_config(Demo(), "demo config")  # the defaults pass
    with pytest.raises(TrimtabError) as err:
        check_config(Demo(steps=0, optimizer="adam", lr=float("nan")), "demo config")
    message = str(err.value)
    assert message.startswith("3 problems in the Demo settings")
    assert "'steps' = 0 is out of range; allowed range: 1 to 1000" in message
    assert "'adam' is not an allowed value" in message and "'lr' = nan" in message


def test_objectives_and_training_configs_check_python_built_configs() -> None:
    from trimtab.objectives.kl import KLConfig
    from trimtab.objectives.pact import PACTConfig, PACTObjective
    from trimtab.objectives.registry import build_objective
    from trimtab.training.config import TrainConfig

    assert PACTObjective(PACTConfig(lam=0.1, mass_weight=1.0)).config.lam == 0.1
    with pytest.raises(TrimtabError, match="PACTConfig: 'lam' = -1 is out of range"):
        PACTConfig(lam=-1)
    changed = PACTConfig()
    changed.lam = -1  # set after construction: the objective checks again
    with pytest.raises(TrimtabError, match="pact config: 'lam' = -1 is out of range"):
        PACTObjective(changed)
    with pytest.raises(TrimtabError, match="pact takes a PACTConfig, got KLConfig"):
        build_objective("pact", KLConfig())
    with pytest.raises(TrimtabError, match="'learning_rate' = -0.1 is out of range"):
        TrainConfig(learning_rate=-0.1).check_trains()


def _package_config_classes() -> list[type]:
    """Every dataclass in trimtab with `option` fields (imports each module to find them)."""
    import importlib
    import pkgutil

    import trimtab

    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(trimtab.__path__, "trimtab."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj)
                    and obj.__module__ == info.name
                    and any("help" in f.metadata for f in dataclasses.fields(obj))):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


def test_every_package_config_checks_its_ranges_when_built_in_python() -> None:
    from trimtab.config import CheckedConfig

    classes = _package_config_classes()
    assert len(classes) >= 20  # the walk found the package's configs
    for cls in classes:
        assert issubclass(cls, CheckedConfig), f"{cls.__name__} is not a CheckedConfig"
        ranged = [f for f in dataclasses.fields(cls) if f.init and "min" in f.metadata
                  and isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]
        required = {f.name: "x" for f in dataclasses.fields(cls)
                    if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        if not ranged:
            continue
        field = ranged[0]
        bad = field.metadata["min"] - 1
        with pytest.raises(TrimtabError, match=f"{cls.__name__}: '{field.name}' = .* is out "
                                               "of range.*fix it where"):
            cls(**required, **{field.name: bad})


def test_optional_accepts_none_and_value() -> None:
    assert config_from_mapping(Demo, {"seed": None, "note": None}).seed is None
    assert config_from_mapping(Demo, {"seed": 7, "note": "hi"}).note == "hi"


def test_missing_required_field() -> None:
    with pytest.raises(TrimtabError, match="Missing required key 'model'"):
        config_from_mapping(NeedsModel, {"beta": 0.2})
    assert config_from_mapping(NeedsModel, {"model": "gpt2"}).model == "gpt2"


def test_all_problems_reported_together() -> None:
    with pytest.raises(TrimtabError) as err:
        config_from_mapping(NeedsModel, {"bta": 1.0, "beta": -1.0})
    message = str(err.value)
    assert message.startswith("3 problems")
    assert "'bta'" in message and "out of range" in message and "'model'" in message


def test_not_a_mapping() -> None:
    with pytest.raises(TrimtabError, match="must be a mapping"):
        config_from_mapping(Demo, ["steps", 3])  # type: ignore[arg-type]


# --- YAML -----------------------------------------------------------------------------


def test_load_yaml_config(tmp_path: Path) -> None:
    """YAML 1.2 scalars: 1e-5 is a float and only true/false are booleans."""
    path = _write_yaml(tmp_path, "lr: 1e-5\nuse_lora: false\nname: no\nenv: {A: '1'}\n")
    cfg = load_yaml_config(Demo, path)
    assert cfg.lr == 1e-5 and cfg.use_lora is False and cfg.name == "no"
    assert cfg.env == {"A": "1"}


def test_yaml_yes_is_not_a_bool(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path, "use_lora: yes\n")
    with pytest.raises(TrimtabError, match="Use true or false") as err:
        load_yaml_config(Demo, path)
    assert str(path) in str(err.value)


def test_yaml_unknown_key_names_file(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path, "lerning_rate: 0.1\n")
    with pytest.raises(TrimtabError) as err:
        load_yaml_config(Demo, path)
    assert str(path) in str(err.value) and "'lerning_rate'" in str(err.value)


def test_yaml_file_problems(tmp_path: Path) -> None:
    with pytest.raises(TrimtabError, match="not found"):
        load_yaml_config(Demo, tmp_path / "missing.yaml")
    with pytest.raises(TrimtabError, match="must contain a mapping"):
        load_yaml_config(Demo, _write_yaml(tmp_path, "- steps\n- 3\n"))
    with pytest.raises(TrimtabError, match="Invalid YAML") as err:
        load_yaml_config(Demo, _write_yaml(tmp_path, "lr: 1\nsteps: [1, 2\n"))
    assert "\n" not in str(err.value) and "at line 3, column 1: expected ',' or ']'" in str(
        err.value)
    with pytest.raises(TrimtabError, match="duplicate key 'steps'"):
        load_yaml_config(Demo, _write_yaml(tmp_path, "steps: 1\nsteps: 2\n"))
    with pytest.raises(TrimtabError, match="is a directory"):
        load_yaml_config(Demo, tmp_path)
    assert load_yaml_config(Demo, _write_yaml(tmp_path, "")) == Demo()


# --- command line ---------------------------------------------------------------------


def test_flags_cover_every_field_and_default_to_suppress() -> None:
    """No flag given -> empty namespace, so defaults are not restated by argparse."""
    parser = _parser()
    assert vars(parser.parse_args([])) == {}
    help_text = parser.format_help()
    for f in dataclasses.fields(Demo):
        assert "--" + f.name.replace("_", "-") in help_text
    assert "--no-use-lora" in help_text
    assert "(default: 10)" in help_text and "range: 1 to 1000" in help_text


def test_precedence_flags_over_overrides_over_yaml_over_defaults(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path, "steps: 50\nlr: 0.5\nname: from-yaml\nuse_lora: false\n")
    args = _parser().parse_args(["--steps", "7", "--use-lora"])
    cfg = build_config(Demo, args=args, yaml_path=path, overrides={"steps": 99, "lr": 0.25})
    assert cfg.steps == 7  # flag beats override and YAML
    assert cfg.lr == 0.25  # override beats YAML
    assert cfg.name == "from-yaml"  # YAML beats default
    assert cfg.use_lora is True  # flag beats YAML
    assert cfg.mode == "fast"  # default


def test_build_config_without_sources_gives_defaults() -> None:
    assert build_config(Demo) == Demo()
    assert build_config(Demo, args=_parser().parse_args([])) == Demo()


def test_no_flag_bool(tmp_path: Path) -> None:
    args = _parser().parse_args(["--no-use-lora"])
    assert build_config(Demo, args=args).use_lora is False


def test_list_tuple_dict_literal_and_optional_flags() -> None:
    argv = [
        "--tags", "x", "y",
        "--weights", "0.5", "1",
        "--layers", "1", "2", "3",
        "--betas", "0.8", "0.9",
        "--ids", "4",
        "--pair", "k", "5",
        "--env", "A=1", "B=x=y",
        "--env", "C=3",
        "--scales", "kl=0.5",
        "--mode", "slow",
        "--seed", "none",
        "--note", "hello",
        "--out", "some/dir",
    ]  # fmt: skip
    cfg = build_config(Demo, args=_parser().parse_args(argv))
    assert cfg.tags == ["x", "y"]
    assert cfg.weights == [0.5, 1.0]
    assert cfg.layers == [1, 2, 3]
    assert cfg.betas == (0.8, 0.9)
    assert cfg.ids == (4,)
    assert cfg.pair == ("k", 5)
    assert cfg.env == {"A": "1", "B": "x=y", "C": "3"}
    assert cfg.scales == {"kl": 0.5}
    assert cfg.mode == "slow"
    assert cfg.seed is None
    assert cfg.note == "hello"
    assert cfg.out == Path("some/dir")


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "many"],
        ["--mode", "medium"],
        ["--optimizer", "adam"],
        ["--env", "novalue"],
        ["--scales", "kl=high"],
        ["--pair", "k", "v"],
    ],
)
def test_bad_flag_values_are_argparse_errors(argv: list[str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(argv)


def test_flags_are_range_checked_and_name_the_flag() -> None:
    args = _parser().parse_args(["--steps", "0"])
    with pytest.raises(TrimtabError) as err:
        build_config(Demo, args=args)
    assert "--steps" in str(err.value) and "1 to 1000" in str(err.value)


def test_build_config_ignores_foreign_namespace_attributes() -> None:
    args = argparse.Namespace(command="train", func=print, lr=0.5)
    assert build_config(Demo, args=args).lr == 0.5


def test_build_config_errors_name_their_source(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path, "beta: -1\n")
    with pytest.raises(TrimtabError) as err:
        build_config(NeedsModel, yaml_path=path, overrides={"model": "gpt2"})
    assert str(path) in str(err.value)
    with pytest.raises(TrimtabError, match="overrides"):
        build_config(NeedsModel, overrides={"model": "gpt2", "betaa": 1.0})
    with pytest.raises(TrimtabError, match="Pass --model VALUE or add 'model: ...'"):
        build_config(NeedsModel, yaml_path=_write_yaml(tmp_path, "beta: 0.2\n"))


def test_required_field_from_flag(tmp_path: Path) -> None:
    args = _parser(NeedsModel).parse_args(["--model", "gpt2"])
    assert build_config(NeedsModel, args=args) == NeedsModel(model="gpt2")


def test_group_title_makes_an_argument_group() -> None:
    parser = argparse.ArgumentParser()
    group = add_dataclass_arguments(parser, NeedsModel, group_title="method options")
    assert isinstance(group, argparse._ArgumentGroup)
    assert "method options:" in parser.format_help()


# --- describing -----------------------------------------------------------------------


def test_describe_config() -> None:
    rows = {name: (type_, default, help_) for name, type_, default, help_ in describe_config(Demo)}
    assert rows["steps"] == ("int", 10, "optimizer steps (range: 1 to 1000)")
    assert rows["seed"][0] == "int | None"
    assert rows["note"][0] == "str | None"
    assert rows["mode"][0] == "{fast,slow}"
    assert rows["weights"][:2] == ("list[float]", [1.0, 2.0])
    assert rows["betas"][0] == "tuple[float, float]"
    assert rows["ids"][0] == "tuple[int, ...]"
    assert rows["env"][:2] == ("dict[str, str]", {})
    assert "choices: adamw, sgd" in rows["optimizer"][2]
    assert describe_config(NeedsModel)[0][2] is REQUIRED


def test_format_config_table_is_aligned() -> None:
    table = format_config_table(NeedsModel)
    lines = table.splitlines()
    assert lines[0].split() == ["name", "type", "default", "help"]
    assert lines[2].startswith("model") and "(required)" in lines[2]
    assert "0.1" in lines[3] and "strength of the KL term" in lines[3]
    help_col = lines[0].index("help")
    assert all(line[help_col - 2 : help_col] == "  " for line in lines)
    assert len(format_config_table(Demo).splitlines()) == len(dataclasses.fields(Demo)) + 2


def test_a_repeatable_flag_replaces_its_yaml_values_rather_than_adding_to_them():
    parser = argparse.ArgumentParser()
    parser.add_argument("--field", action="append", default=[])
    set_yaml_defaults(parser, {"field": ["prompt=goal", "response=target"]}, "c.yaml")
    assert parser.parse_args([]).field == ["prompt=goal", "response=target"]
    assert parser.parse_args(["--field", "prompt=q", "--field", "response=a"]).field == [
        "prompt=q", "response=a"]
    assert parser.parse_args(["--field=prompt=q"]).field == ["prompt=q"]
    set_yaml_defaults(parser, {"field": "prompt=goal"}, "c.yaml")  # a single value
    assert parser.parse_args([]).field == ["prompt=goal"]
