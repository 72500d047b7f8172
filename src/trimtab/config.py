"""Flat config dataclasses: defaults written once, flags and YAML loading derived from them.

A config is a plain dataclass whose fields are declared with `option`::

    @dataclass
    class DPOConfig:
        beta: float = option(0.1, "strength of the KL term", min=0.0)

From that one declaration this module builds the command-line flags
(`add_dataclass_arguments`), strict YAML / mapping loading with type checks
(`config_from_mapping`, `load_yaml_config`), the merge of flags, overrides, YAML and
defaults (`build_config`), the table behind `trimtab config show` (`format_config_table`)
and the plain dict saved into results (`config_to_dict`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from trimtab.errors import TrimtabError

__all__ = [
    "REQUIRED",
    "CheckedConfig",
    "read_yaml_mapping",
    "add_dataclass_arguments",
    "build_config",
    "config_from_mapping",
    "config_to_dict",
    "describe_config",
    "format_config_table",
    "load_yaml_config",
    "option",
]

T = TypeVar("T")

#: Pass as the default to `option` for a field that has no default and must be given.
REQUIRED: Any = dataclasses.MISSING

_NoneType = type(None)
_UNION_ORIGINS: tuple[Any, ...] = (Union, types.UnionType)
_MAX_SHOWN = 80  # longest value repr shown in an error message


# --------------------------------------------------------------------------------------
# Declaring fields
# --------------------------------------------------------------------------------------


SEED_MAX = 2**32 - 1  # numpy's seeds, which transformers' set_seed also sets


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | list[Any] | None = None,
) -> Any:
    """A dataclass field carrying its one-line help and optional range or choices.

    List, dict and set defaults get a `default_factory` (a deep copy each time), so
    instances never share a mutable default. Pass `REQUIRED` for a field with no default.
    `min`/`max` are inclusive; for list, tuple and dict fields they apply to each element
    (dict: each value), as do `choices`.
    """
    if not isinstance(help, str) or not help.strip() or "\n" in help:
        raise ValueError(f"option help must be one non-empty line, got {help!r}")
    if min is not None and max is not None and min > max:
        raise ValueError(f"option min {min!r} is greater than max {max!r}")
    metadata: dict[str, Any] = {"help": help.strip()}
    if min is not None:
        metadata["min"] = min
    if max is not None:
        metadata["max"] = max
    if choices is not None:
        choices = tuple(choices)
        if not choices:
            raise ValueError("option choices must not be empty")
        metadata["choices"] = choices
    if default is not dataclasses.MISSING:
        # Catch a default that breaks its own constraints where it is written.
        problem = _constraint_problem(default, metadata)
        if problem is not None:
            raise ValueError(f"option default {default!r} violates its own constraints: {problem}")
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(
            default_factory=functools.partial(copy.deepcopy, default), metadata=metadata
        )
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------
# Introspection helpers
# --------------------------------------------------------------------------------------


def _require_dataclass(cls: Any) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")


def _init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields a config can set (those passed to `__init__`)."""
    _require_dataclass(cls)
    return [f for f in dataclasses.fields(cls) if f.init]


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations, so `from __future__ import annotations` strings work."""
    return typing.get_type_hints(cls)


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in _UNION_ORIGINS


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for `X | None`; other types pass through."""
    if _is_union(tp):
        args = get_args(tp)
        if _NoneType in args:
            rest = tuple(a for a in args if a is not _NoneType)
            inner = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007 - runtime tuple
            return inner, True
    return tp, False


def _type_name(tp: Any) -> str:
    """A readable name for an annotation, e.g. `list[float]`, `int | None`, `{fast,slow}`."""
    if tp is _NoneType or tp is None:
        return "None"
    if tp is Any:
        return "any"
    origin, args = get_origin(tp), get_args(tp)
    if origin in _UNION_ORIGINS:
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_name(args[0])}, ...]"
        if args:
            return "tuple[" + ", ".join(_type_name(a) for a in args) + "]"
        return "tuple"
    if origin in (list, dict):
        if args:
            return f"{origin.__name__}[" + ", ".join(_type_name(a) for a in args) + "]"
        return origin.__name__
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def _show(value: Any) -> str:
    """A short repr of a user value for error messages."""
    text = repr(str(value)) if isinstance(value, PurePath) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _format_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "(required)"
    return _show(value)


# --------------------------------------------------------------------------------------
# Type checking and coercion
# --------------------------------------------------------------------------------------


class _BadValue(Exception):
    """A value that does not fit its annotation; `where` is the key path (e.g. `w[2]`)."""

    def __init__(self, where: str, expected: Any, value: Any) -> None:
        super().__init__(where)
        self.where = where
        self.expected = expected
        self.value = value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`, returning it in canonical form (e.g. 3 -> 3.0)."""
    if tp is Any or tp is object:
        return value
    if tp is _NoneType or tp is None:
        if value is None:
            return None
        raise _BadValue(where, tp, value)
    origin, args = get_origin(tp), get_args(tp)

    if origin in _UNION_ORIGINS:
        if value is None:
            if _NoneType in args:
                return None
            raise _BadValue(where, tp, value)
        members = [a for a in args if a is not _NoneType]
        # Prefer the member whose type matches exactly, so `int | float` keeps 1.0 a float.
        members.sort(key=lambda a: 0 if isinstance(a, type) and type(value) is a else 1)
        for member in members:
            try:
                return _coerce(value, member, where)
            except _BadValue:
                continue
        raise _BadValue(where, tp, value)

    if origin is Literal:
        for choice in args:
            if type(choice) is type(value) and choice == value:
                return choice
        raise _BadValue(where, tp, value)

    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _BadValue(where, tp, value)
        elem = args[0] if args else Any
        return [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]

    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _BadValue(where, tp, value)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            elem = args[0] if args else Any
            return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _BadValue(where, tp, value)
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )

    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _BadValue(where, tp, value)
        key_tp, val_tp = args if args else (Any, Any)
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = _coerce(k, key_tp, f"{where} (key {k})")
            out[key] = _coerce(v, val_tp, f"{where}[{k}]")
        return out

    if origin is not None:
        raise TypeError(f"unsupported config annotation {tp!r} at {where!r}")

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _BadValue(where, tp, value)
    if tp is int:
        if isinstance(value, bool):
            raise _BadValue(where, tp, value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _BadValue(where, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _BadValue(where, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _BadValue(where, tp, value)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise _BadValue(where, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _BadValue(where, tp, value)
    raise TypeError(f"unsupported config annotation {tp!r} at {where!r}")


def _leaves(value: Any) -> Iterator[Any]:
    """The values a min/max/choices constraint applies to: elements of lists, dict values."""
    if isinstance(value, (list, tuple)):
        yield from value
    elif isinstance(value, Mapping):
        yield from value.values()
    else:
        yield value


def _range_text(meta: Mapping[str, Any]) -> str | None:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return None


def _constraint_problem(value: Any, meta: Mapping[str, Any]) -> str | None:
    """Why `value` breaks the field's min/max/choices, or None if it does not."""
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    for leaf in _leaves(value):
        if leaf is None:
            continue
        if choices is not None and leaf not in choices:
            allowed = ", ".join(_show(c) for c in choices)
            return f"{_show(leaf)} is not an allowed value; choose one of: {allowed}"
        if not isinstance(leaf, (int, float)) or isinstance(leaf, bool):
            continue
        # Written as `not (a <= b)` so NaN is rejected too.
        if (lo is not None and not leaf >= lo) or (hi is not None and not leaf <= hi):
            return f"{_show(leaf)} is out of range; allowed range: {_range_text(meta)}"
        if not math.isfinite(leaf):  # e.g. a resta scale of inf, within a one-sided range
            return f"{_show(leaf)} is not a finite number; give one"
    return None


def _type_hint_for(expected: Any, value: Any) -> str:
    """A fix suggestion for the common YAML slips (quoted numbers, yes/no, unquoted text)."""
    inner, _ = _strip_optional(expected)
    if inner is bool and isinstance(value, str):
        return " Use true or false."
    if inner in (int, float) and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " Write it as a number, without quotes."
    if inner is int and isinstance(value, float):
        return " Use a whole number."
    if inner is str and isinstance(value, (int, float, bool)):
        return " Quote it to make it text."
    return ""


def _expected_text(tp: Any) -> str:
    inner, optional = _strip_optional(tp)
    if get_origin(inner) is Literal:
        text = "one of " + ", ".join(_show(a) for a in get_args(inner))
        return text + (" (or null)" if optional else "")
    return f"of type {_type_name(tp)}"


# --------------------------------------------------------------------------------------
# Mapping -> config
# --------------------------------------------------------------------------------------


def _allowed_keys_text(names: list[str]) -> str:
    return ", ".join(names)


def _suggest(key: str, names: list[str]) -> str:
    normalized = key.replace("-", "_").lower()
    if normalized in names:
        return normalized
    close = difflib.get_close_matches(normalized, names, n=1, cutoff=0.6)
    return close[0] if close else ""


def _from_mapping(
    cls: type[T],
    mapping: Mapping[Any, Any],
    origin_of: Callable[[Any], str],
    missing_hint: Callable[[str], str],
    also_allowed: tuple[str, ...] = (),
) -> T:
    """Validate `mapping` against `cls`, collecting every problem into one error.
    `also_allowed`: keys the same file may hold for the command itself (its path flags),
    named in the unknown-key message."""
    fields = _init_fields(cls)
    types_ = _field_types(cls)
    by_name = {f.name: f for f in fields}
    names = list(by_name)
    allowed = names + [name for name in also_allowed if name not in by_name]
    problems: list[str] = []
    values: dict[str, Any] = {}

    for key, raw in mapping.items():
        if not isinstance(key, str) or key not in by_name:
            where = origin_of(key)
            guess = _suggest(key, allowed) if isinstance(key, str) else ""
            hint = f" Did you mean {guess!r}?" if guess else ""
            problems.append(
                f"Unknown key {key!r} in {where}.{hint} Rename or remove it; "
                f"allowed keys: {_allowed_keys_text(allowed)}."
            )
            continue
        f = by_name[key]
        tp = types_[key]
        try:
            value = _coerce(raw, tp, key)
        except _BadValue as bad:
            expected = bad.expected if bad.where != key else tp
            problems.append(
                f"{origin_of(key)}: '{bad.where}' must be {_expected_text(expected)}, "
                f"got {_show(bad.value)} ({type(bad.value).__name__})."
                f"{_type_hint_for(expected, bad.value)}"
            )
            continue
        problem = _constraint_problem(value, f.metadata)
        if problem is not None:
            problems.append(f"{origin_of(key)}: {key!r} = {problem}.")
            continue
        values[key] = value

    for f in fields:
        if f.name not in mapping and not _has_default(f):
            problems.append(f"Missing required key {f.name!r}. {missing_hint(f.name)}")

    _raise_problems(problems, cls)
    return cls(**values)


def _raise_problems(problems: list[str], cls: type) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise TrimtabError(problems[0])
    listing = "\n".join(f"  - {p}" for p in problems)
    raise TrimtabError(f"{len(problems)} problems in the {cls.__name__} settings:\n{listing}")


def check_config(config: Any, source: str) -> None:
    """Check a config built in Python against its fields' ranges and choices, the checks a
    YAML file or a flag gets when parsed: `PACTConfig(lam=-1)` fails before training, not in
    the middle of it."""
    cls = type(config)
    _require_dataclass(cls)
    problems = [f"{source}: {f.name!r} = {problem}; fix it where the {cls.__name__} is built."
                for f in _init_fields(cls)
                if (problem := _constraint_problem(getattr(config, f.name), f.metadata))]
    _raise_problems(problems, cls)


class CheckedConfig:
    """Base of trimtab's config dataclasses: one built in Python (`RecoverConfig(
    restore_fraction=2)`) gets the range and choice checks a YAML file or a flag gets when
    parsed, at construction, instead of failing deep inside a run or not at all."""

    def __post_init__(self) -> None:
        check_config(self, type(self).__name__)


def config_from_mapping(cls: type[T], mapping: Mapping[str, Any], *, source: str = "config") -> T:
    """Build `cls` from a plain mapping, strictly: unknown keys, wrong types, out-of-range
    values and missing required keys all raise `TrimtabError` naming `source` and the fix."""
    _require_dataclass(cls)
    if not isinstance(mapping, Mapping):
        raise TrimtabError(
            f"{source} must be a mapping of key: value settings, got "
            f"{type(mapping).__name__}. Write it as 'key: value' lines."
        )
    return _from_mapping(
        cls,
        mapping,
        origin_of=lambda _key: source,
        missing_hint=lambda name: f"Add '{name}: ...' to {source}.",
    )


# --------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars and no duplicate keys.

    PyYAML follows YAML 1.1, where `1e-5` is a string and `yes`/`no`/`on`/`off` are
    booleans; both surprise people writing configs. Here only true/false are booleans and
    any decimal or exponent number is a float. A repeated key is an error, not a silent
    overwrite.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_ConfigLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml_mapping(path: str | PurePath) -> dict[str, Any]:
    """The top-level mapping of a YAML file; an empty file is an empty mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrimtabError(
            f"Config file not found: {path}. Check the path (relative paths are resolved "
            f"from {Path.cwd()})."
        ) from None
    except IsADirectoryError:
        raise TrimtabError(f"Config path {path} is a directory; pass a YAML file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrimtabError(
            f"Cannot read config file {path}: {exc}. Pass a readable UTF-8 YAML file."
        ) from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader subclass, so still safe
    except yaml.YAMLError as exc:
        # one line, as every user error: the problem and where, not PyYAML's excerpt
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TrimtabError(
            f"Invalid YAML in {path}{where}: {problem}. Fix the syntax there."
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrimtabError(
            f"Config file {path} must contain a mapping of 'key: value' settings, got a "
            f"{type(data).__name__}. Write one 'key: value' per line at the top level."
        )
    return data


def load_yaml_config(cls: type[T], path: str | PurePath) -> T:
    """Read a YAML file into `cls` (strict; errors name the file)."""
    _require_dataclass(cls)
    return config_from_mapping(cls, read_yaml_mapping(path), source=str(path))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_converter(tp: Any) -> Callable[[str], Any]:
    """str -> value for one command-line token of type `tp`; argparse reports failures."""
    inner, optional = _strip_optional(tp)
    name = _type_name(inner)

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        origin = get_origin(inner)
        if origin is Literal:
            for choice in get_args(inner):
                if str(choice) == text:
                    return choice
            return text  # argparse's `choices` check reports it with the allowed values
        if origin in _UNION_ORIGINS:
            for member in get_args(inner):
                try:
                    return _scalar_converter(member)(text)
                except argparse.ArgumentTypeError:
                    continue
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        try:
            if inner is bool:
                lowered = text.lower()
                if lowered not in ("true", "false"):
                    raise ValueError(text)
                return lowered == "true"
            if inner in (int, float, str) or inner is Any:
                return text if inner is Any else inner(text)
            if isinstance(inner, type) and issubclass(inner, PurePath):
                return inner(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        raise TypeError(f"unsupported config annotation {tp!r} for a command-line flag")

    convert.__name__ = name  # argparse names the type in some messages
    return convert


class _FixedTupleAction(argparse.Action):
    """Stores a fixed-length tuple flag, converting each position with its own type."""

    def __init__(self, *args: Any, converters: list[Callable[[str], Any]], **kwargs: Any) -> None:
        self.converters = converters
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            converted = tuple(conv(v) for conv, v in zip(self.converters, values, strict=True))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, converted)


class _KeyValueAction(argparse.Action):
    """Collects `KEY=VALUE` items into a dict; repeating the flag adds to it."""

    def __init__(
        self,
        *args: Any,
        key_converter: Callable[[str], Any],
        value_converter: Callable[[str], Any],
        **kwargs: Any,
    ) -> None:
        self.key_converter = key_converter
        self.value_converter = value_converter
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        result = dict(current) if isinstance(current, dict) else {}
        for item in values:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise argparse.ArgumentError(self, f"expected KEY=VALUE, got {item!r}")
            try:
                result[self.key_converter(key)] = self.value_converter(raw)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentError(self, f"in {item!r}: {exc}") from None
        setattr(namespace, self.dest, result)


def _constraint_text(tp: Any, meta: Mapping[str, Any]) -> str:
    """`range: >= 0.0` / `choices: a, b` for help and tables ('' if unconstrained)."""
    parts = []
    rng = _range_text(meta)
    if rng is not None:
        parts.append(f"range: {rng}")
    if meta.get("choices") is not None:
        parts.append("choices: " + ", ".join(str(c) for c in meta["choices"]))
    return "; ".join(parts)


def _help_for(f: dataclasses.Field[Any], tp: Any) -> str:
    text = f.metadata.get("help", "")
    extra = _constraint_text(tp, f.metadata)
    if extra:
        text = f"{text} ({extra})" if text else extra
    suffix = "required" if not _has_default(f) else f"default: {_format_default(_default_of(f))}"
    inner, optional = _strip_optional(tp)
    is_container = get_origin(inner) in (list, tuple, dict) or inner in (list, tuple, dict)
    if optional and inner is not bool and not is_container:
        suffix += "; pass 'none' for None"
    suffix = f"({suffix})"
    text = f"{text} {suffix}" if text else suffix
    return text.replace("%", "%%")  # argparse %-formats help strings


def _argument_kwargs(f: dataclasses.Field[Any], tp: Any) -> dict[str, Any]:
    """add_argument keywords for one field (everything but the flag name)."""
    kwargs: dict[str, Any] = {
        "dest": f.name,
        "default": argparse.SUPPRESS,
        "help": _help_for(f, tp),
    }
    inner, optional = _strip_optional(tp)
    meta_choices = f.metadata.get("choices")
    origin, args = get_origin(inner), get_args(inner)

    if inner is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs

    if origin in (list, tuple) or inner in (list, tuple):
        variable = (
            origin is list
            or inner in (list, tuple)
            or not args
            or (len(args) == 2 and args[1] is Ellipsis)
        )
        if variable:
            elem = args[0] if args else Any
            if get_origin(elem) in (list, tuple, dict):
                raise TypeError(f"unsupported element type for a command-line flag: {tp!r}")
            kwargs["nargs"] = "+"
            kwargs["type"] = _scalar_converter(elem)
            elem_choices = meta_choices
            if elem_choices is None and get_origin(elem) is Literal:
                elem_choices = get_args(elem)
            if elem_choices is not None:
                kwargs["choices"] = tuple(elem_choices)
            kwargs["metavar"] = f.name.upper()
            return kwargs
        kwargs["nargs"] = len(args)
        kwargs["action"] = _FixedTupleAction
        kwargs["converters"] = [_scalar_converter(a) for a in args]
        kwargs["metavar"] = tuple(_type_name(a).upper() for a in args)
        return kwargs

    if origin is dict or inner is dict:
        key_tp, val_tp = args if args else (str, Any)
        kwargs["nargs"] = "+"
        kwargs["action"] = _KeyValueAction
        kwargs["key_converter"] = _scalar_converter(key_tp)
        kwargs["value_converter"] = _scalar_converter(val_tp)
        kwargs["metavar"] = "KEY=VALUE"
        return kwargs

    kwargs["type"] = _scalar_converter(tp)
    choices: tuple[Any, ...] | None = None
    if meta_choices is not None:
        choices = tuple(meta_choices)
    elif origin is Literal:
        choices = args
    if choices is not None:
        kwargs["choices"] = (*choices, None) if optional else choices
    return kwargs


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    group_title: str | None = None,
) -> argparse.ArgumentParser | argparse._ArgumentGroup:
    """Add one `--field-name` flag per field of `cls`; returns the parser or group used.

    Every flag defaults to `argparse.SUPPRESS`, so the namespace holds only the flags given
    and `build_config` can layer them over YAML and defaults. Bools become
    `--flag/--no-flag`, lists take several values, dicts take `KEY=VALUE` items. Values are
    range-checked in `build_config`, not here. `group_title` needs a full parser (argparse
    groups do not nest).
    """
    fields = _init_fields(cls)
    types_ = _field_types(cls)
    container = parser
    if group_title is not None:
        if not isinstance(parser, argparse.ArgumentParser):
            raise TypeError("group_title needs an ArgumentParser; argparse groups do not nest")
        container = parser.add_argument_group(group_title)
    for f in fields:
        container.add_argument(_flag(f.name), **_argument_kwargs(f, types_[f.name]))
    if isinstance(parser, argparse.ArgumentParser):  # for `apply_yaml_defaults`
        parser._config_fields = (getattr(parser, "_config_fields", frozenset())  # type: ignore[attr-defined]
                                 | {f.name for f in fields})
    return container


#: Namespace attribute where `apply_yaml_defaults` records a dataclass-backed command's own
#: flags (the ones it took from the YAML), for `build_config` to leave out of the options.
OWN_FLAGS = "_yaml_own_flags"


def without_command_flags(mapping: Mapping[Any, Any],
                          args: argparse.Namespace | None) -> dict[Any, Any]:
    """A command's YAML less the keys that `apply_yaml_defaults` applied as the command's own
    flags (model folders, --output-dir). Every other key stays, for `build_config` to check."""
    own = set(_command_flags(args))
    return {k: v for k, v in mapping.items() if str(k).replace("-", "_") not in own}


def _command_flags(args: argparse.Namespace | None) -> tuple[str, ...]:
    return tuple(getattr(args, OWN_FLAGS, ())) if args is not None else ()


def build_config(
    cls: type[T],
    *,
    args: argparse.Namespace | None = None,
    yaml_path: str | PurePath | None = None,
    overrides: Mapping[str, Any] | None = None,
    overrides_origin: str = "overrides",
) -> T:
    """Merge settings: command-line flags > `overrides` > YAML file > dataclass defaults.

    `overrides_origin` names where the overrides came from in errors (e.g. the YAML file
    they were split from).

    Everything goes through the same strict validation as `config_from_mapping`, and each
    error names where the bad value came from. Namespace attributes that are not fields of
    `cls` (other commands' flags) are ignored.
    """
    _require_dataclass(cls)
    merged: dict[Any, Any] = {}
    origins: dict[Any, str] = {}
    if yaml_path is not None:
        for key, value in without_command_flags(read_yaml_mapping(yaml_path), args).items():
            merged[key] = value
            origins[key] = str(yaml_path)
    if overrides is not None:
        if not isinstance(overrides, Mapping):
            raise TypeError(f"overrides must be a mapping, got {type(overrides).__name__}")
        for key, value in overrides.items():
            merged[key] = value
            origins[key] = overrides_origin
    if args is not None:
        given = vars(args)
        for f in _init_fields(cls):
            if f.name in given:
                merged[f.name] = given[f.name]
                origins[f.name] = f"command-line flag {_flag(f.name)}"

    def missing_hint(name: str) -> str:
        in_yaml = f" or add '{name}: ...' to {yaml_path}" if yaml_path is not None else ""
        return f"Pass {_flag(name)} VALUE{in_yaml}."

    return _from_mapping(
        cls,
        merged,
        origin_of=lambda key: origins.get(key, "config"),
        missing_hint=missing_hint,
        also_allowed=_command_flags(args),
    )


# --------------------------------------------------------------------------------------
# Describing and saving
# --------------------------------------------------------------------------------------


def describe_config(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) per field; default is `REQUIRED` for required fields.

    The help includes the field's range or choices, so the table says what is allowed.
    """
    fields = _init_fields(cls)
    types_ = _field_types(cls)
    rows = []
    for f in fields:
        tp = types_[f.name]
        text = f.metadata.get("help", "")
        extra = _constraint_text(tp, f.metadata)
        if extra:
            text = f"{text} ({extra})" if text else extra
        rows.append((f.name, _type_name(tp), _default_of(f), text))
    return rows


def format_config_table(cls: type) -> str:
    """An aligned plain-text table of the fields of `cls`, for `trimtab config show`."""
    header = ("name", "type", "default", "help")
    body = [
        (name, type_name, _format_default(default), text)
        for name, type_name, default, text in describe_config(cls)
    ]
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]

    def line(row: tuple[str, str, str, str]) -> str:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        return "  ".join([*cells, row[3]]).rstrip()

    rule = ("-" * widths[0], "-" * widths[1], "-" * widths[2], "-" * len(header[3]))
    return "\n".join([line(header), line(rule), *(line(r) for r in body)])


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, Mapping):
        return {(str(k) if isinstance(k, PurePath) else k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_to_plain(v) for v in items]
    if isinstance(value, PurePath):
        return str(value)
    return value


def config_to_dict(obj: Any) -> dict[str, Any]:
    """The fields of a config instance as JSON/YAML-safe plain data (tuples -> lists)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a dataclass instance, got {obj!r}")
    return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


# --------------------------------------------------------------------------------------
# YAML for plain argparse commands
# --------------------------------------------------------------------------------------


def _subparser_for(parser: argparse.ArgumentParser,
                   argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that the leading command words of `argv` select."""
    current = parser
    for token in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or token not in subs[0].choices:
            break
        current = subs[0].choices[token]
    return current


def _config_path(argv: list[str]) -> str | None:
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def add_plain_yaml_option(parser: argparse.ArgumentParser) -> None:
    """Give every leaf command that has no `--config` one that `apply_yaml_defaults` reads."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if not any(a.dest == "config" for a in parser._actions):
            parser.add_argument("--config", metavar="FILE.yaml",
                                help="YAML file of this command's options (keys are the flag "
                                     "names); flags given on the command line win")
            parser._plain_yaml = True  # type: ignore[attr-defined]
        return
    for child in dict.fromkeys(subs[0].choices.values()):
        add_plain_yaml_option(child)


def apply_yaml_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Let `--config FILE.yaml` fill any flag of the selected command; flags still win.

    Plain argparse commands take every key here. Commands whose options are a dataclass read
    those through `build_config`, and take only their own flags (paths, model folders) here.
    Keys are flag names (dashes or underscores); an unknown key or a bad value is an error
    naming the key and what is allowed.
    """
    path = _config_path(argv)
    sub = _subparser_for(parser, argv)
    if path is None:
        return
    if getattr(sub, "_plain_yaml", False):
        set_yaml_defaults(sub, read_yaml_mapping(path), path)
    elif (fields := getattr(sub, "_config_fields", None)) is not None:
        # A dataclass-backed command reads its options strictly in `build_config`; its own
        # flags (model folders, --output-dir) come from the same file here.
        own = {a.dest for a in sub._actions if a.option_strings} - fields - {"help", "config"}
        set_yaml_defaults(sub, {k: v for k, v in read_yaml_mapping(path).items()
                                if str(k).replace("-", "_") in own}, path)
        sub.set_defaults(**{OWN_FLAGS: tuple(sorted(own))})


class _FromYaml(list):
    """A repeatable flag's values as the YAML gave them (see `_AppendReplacingYaml`)."""


class _AppendReplacingYaml(argparse._AppendAction):
    """`action="append"` whose first flag on the command line drops the YAML's values, so
    `--field prompt=question` replaces a YAML `field: [prompt=goal]` rather than adding a
    second mapping of the same field."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if isinstance(getattr(namespace, self.dest, None), _FromYaml):
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def set_yaml_defaults(sub: argparse.ArgumentParser, mapping: Mapping[Any, Any],
                      path: str | PurePath) -> None:
    """Flag values from a YAML `mapping` become `sub`'s defaults (flags still win), each
    checked against its flag's type and choices; a required flag given there is satisfied."""
    by_dest = {a.dest: a for a in sub._actions
               if a.option_strings and a.dest not in ("help", "config")}
    values = {}
    for key, value in mapping.items():
        dest = str(key).replace("-", "_")
        action = by_dest.get(dest)
        if action is None:
            raise TrimtabError(f"{path}: unknown key {key!r} for `{sub.prog}`; allowed keys: "
                               f"{', '.join(sorted(by_dest))}.")
        if action.nargs == 0 and not isinstance(value, bool):  # a switch such as --force
            raise TrimtabError(f"{path}: {key}: {value!r} is not a boolean; write true or "
                               "false.")
        if action.type is not None and isinstance(value, str | int | float):
            try:
                value = action.type(str(value)) if not isinstance(value, bool) else value
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                raise TrimtabError(f"{path}: {key}: {err}") from None
        if action.choices is not None and value not in action.choices:
            raise TrimtabError(f"{path}: {key}: {value!r} is not one of "
                               f"{', '.join(map(str, action.choices))}.")
        if (isinstance(action, argparse._AppendAction)  # not extend: its values are flat
                and not isinstance(action, argparse._ExtendAction)):
            # argparse appends flags to a list default; a flag should replace it instead
            value = _FromYaml(value if isinstance(value, list) else [value])
            action.__class__ = _AppendReplacingYaml
        action.required = False
        values[dest] = value
    sub.set_defaults(**values)
