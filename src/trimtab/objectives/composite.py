"""Composition: one objective's loss plus the penalty terms of others, in one training run.

`pact+gated` trains with gated's loss (its gated SFT, policy gradient and abstention) plus
pact's safety-token KL on the same response logits: one policy forward, not two. Only
objectives of the form "CE + a term" (those that define `penalty`: `kl`, `pact`) can be added;
the one part without a penalty (`sft`, `gated`, `risk-kl`, `soft-sft`) is the primary whose
loss the terms are added to. Two parts that each reweight or replace the CE cannot be combined:
their CE terms would be counted twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trimtab.errors import TrimtabError
from trimtab.objectives.base import Objective, ObjectiveOutput, TrainingContext


def can_be_added(objective: Objective) -> bool:
    return getattr(objective, "penalty", None) is not None


class CompositeObjective(Objective):
    """`primary` + the penalties of `addons`. Diagnostics are logged as `<part>/<name>`."""

    config_class = dict
    summary = "one objective's loss plus the penalty terms of others (e.g. pact+gated)"

    def __init__(self, parts: Sequence[Objective], name: str | None = None) -> None:
        if len(parts) < 2:
            raise TrimtabError("a composed method needs at least two parts, as in pact+gated.")
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise TrimtabError(f"method {'+'.join(names)!r} names a part twice; give each once.")
        primaries = [p for p in parts if not can_be_added(p)]
        if len(primaries) > 1:
            addable = ", ".join(sorted(n for n, p in zip(names, parts, strict=True)
                                       if can_be_added(p))) or "kl, pact"
            raise TrimtabError(
                f"cannot combine {' and '.join(p.name for p in primaries)}: each reweights or "
                f"replaces the fine-tuning loss, so it would be counted twice. Combine at most "
                f"one of them with methods that add a penalty term ({addable})."
            )
        self.primary = primaries[0] if primaries else parts[0]
        self.addons = [p for p in parts if p is not self.primary]
        self.parts = list(parts)
        self.name = name or "+".join(names)  # type: ignore[misc]
        super().__init__({p.name: p.config for p in parts})

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        # read after setup: pact stops needing the reference once its cache is built
        return any(p.needs_reference for p in self.parts)

    @property
    def samples_from_policy(self) -> bool:  # type: ignore[override]
        return any(p.samples_from_policy for p in self.parts)

    def input_files(self) -> list[str]:
        return [f for part in self.parts for f in part.input_files()]

    def setup(self, context: TrainingContext) -> None:
        for part in self.parts:
            part.setup(context)

    def compute(self, policy, batch, reference) -> ObjectiveOutput:
        out = self.primary(policy, batch, reference)
        if out.resp is None:
            raise TrimtabError(f"{self.primary.name} returned no response logits, so it cannot "
                               "be composed; it must set ObjectiveOutput.resp.")
        loss = out.loss
        metrics = {f"{self.primary.name}/{k}": v for k, v in out.metrics.items()}
        for addon in self.addons:
            term, extra = addon.penalty(out.resp, batch, reference)
            loss = loss + term
            metrics.update({f"{addon.name}/{k}": v for k, v in extra.items()})
            metrics[f"{addon.name}/penalty"] = float(term.detach())
        return ObjectiveOutput(loss, metrics, out.resp)


def build_composite(names: Sequence[str], configs: Mapping[str, Any] | None = None
                    ) -> CompositeObjective:
    from trimtab.objectives.registry import get_method

    configs = configs or {}
    return CompositeObjective([get_method(n)(configs.get(n)) for n in names])
