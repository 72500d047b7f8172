"""`trimtab demo`'s options, apart from the demo itself: the command line builds its parser
from them without importing torch and transformers (`trimtab --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from trimtab.config import SEED_MAX, CheckedConfig, option


@dataclass
class DemoConfig(CheckedConfig):
    out: str = option("./trimtab-out/demo", "folder for results.json, report.md and the plot")
    methods: list[str] = option(["sft", "kl", "risk-kl", "pact", "soft-sft", "sft+recover",
                                 "gated"],
                                "methods to fine-tune with")
    fractions: list[float] = option([0.0, 0.1], "harmful fractions mixed into the task data",
                                    min=0.0, max=0.99)
    task: str = option("general", "downstream task", choices=("general", "domain"))
    seed: int = option(0, "seed of fine-tuning (the world and references have their own)",
                       min=0, max=SEED_MAX)
    quick: bool = option(False, "a small world and short runs (a minute or two; for tests)")
    progress: bool = option(True, "show progress bars")
