"""Method names -> objectives, so `--method` validates and `trimtab methods` can list them."""

from __future__ import annotations

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
