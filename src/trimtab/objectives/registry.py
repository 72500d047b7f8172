"""Method names -> objectives, so `--method` validates and `trimtab methods` can list them."""

from __future__ import annotations

from typing import Any

from trimtab.errors import TrimtabError
from trimtab.objectives.base import Objective
from trimtab.objectives.gated import GatedObjective
from trimtab.objectives.kl import KLObjective
from trimtab.objectives.pact import PACTObjective
from trimtab.objectives.risk_kl import RiskKLObjective
from trimtab.objectives.sft import SFTObjective
from trimtab.objectives.soft_sft import SoftSFTObjective

METHODS: dict[str, type[Objective]] = {cls.name: cls for cls in (SFTObjective, KLObjective,
                                                          RiskKLObjective, PACTObjective,
                                                          SoftSFTObjective, GatedObjective)}


def list_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> type[Objective]:
    if name not in METHODS:
        import difflib

        close = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TrimtabError(
            f"unknown method {name!r}.{hint} Available methods: {', '.join(list_methods())} "
            "(`trimtab methods` describes them)."
        )
    return METHODS[name]


def build_objective(name: str, config: Any | None = None) -> Objective:
    """The objective for a method name; `a+b` composes (see `trimtab.objectives.composite`).

    For a composed name `config` maps each part's name to its config (missing: defaults).
    """
    if "+" not in name:
        return get_method(name)(config)
    from trimtab.objectives.composite import build_composite

    parts = name.split("+")
    if config is not None and not isinstance(config, dict):
        raise TrimtabError(f"the config of composed method {name!r} must map each part "
                           f"({', '.join(parts)}) to its config, got {type(config).__name__}.")
    return build_composite(parts, config)
