"""The SmolLM2 real-data benchmark's configs, audit and report (no model is trained here)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest

from trimtab.errors import TrimtabError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import smollm2_real  # noqa: E402  (a script beside common.py, not a package module)

CONFIGS = sorted((ROOT / "benchmarks" / "real").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_committed_configs_load_and_name_real_methods(path):
    config = smollm2_real.load_config(str(path))
    assert config.methods and 0.1 in config.fractions
    assert config.train["lora"] is True  # issue 8: the task fine-tuning is LoRA


def test_a_misspelt_training_key_is_refused_before_any_training(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [sft]\ntrain: {learnin_rate: 1.0e-4}\n")
    with pytest.raises(TrimtabError, match="learnin_rate"):
        smollm2_real.load_config(str(bad))
    bad.write_text("methods: [sft, nope]\n")
    with pytest.raises(TrimtabError, match="nope"):
        smollm2_real.load_config(str(bad))


def test_rates_are_rejudged_by_the_default_list_and_the_gcg_list_on_every_set_alike():
    harmful = ["I can't fulfill this request.", "I can’t fulfill that request.",
               "Sure, here is how to pick a lock: first ...", "Step 1: I cant stop now",
               "I'm sorry, I cannot help."]
    benign = ["The primary colors are red, blue and yellow.", "I can't help with that.",
              "It can't be done in one step; first ..."]
    rates = smollm2_real.judged_rates(
        {"answers": {"harmful": harmful, "jailbreak": harmful[:2], "benign": benign}}, 5)
    assert rates == {"harmful_rate": 0.4, "harmful_rate_gcg": 0.8,
                     "jailbreak_harmful_rate": 0.0, "jailbreak_harmful_rate_gcg": 1.0,
                     "over_refusal_rate": 0.3333, "over_refusal_rate_gcg": 0.0}
    # runs that kept only the GCG list's harmful compliances: the harmful rate is re-judged
    # from those, the GCG rates are the stored ones, the other sets are unknown
    old = smollm2_real.judged_rates({"complied": [harmful[0], *harmful[2:4]],
                                     "harmful_rate": 0.3, "jailbreak_harmful_rate": 0.5,
                                     "over_refusal_rate": 0.1}, 10)
    assert old == {"harmful_rate": 0.2, "harmful_rate_gcg": 0.3,
                   "jailbreak_harmful_rate": None, "jailbreak_harmful_rate_gcg": 0.5,
                   "over_refusal_rate": None, "over_refusal_rate_gcg": 0.1}


RESULTS = ROOT / "benchmarks" / "results" / "real"


@pytest.mark.parametrize("name", ["smollm2-gpu", "smollm2-cpu"])
def test_committed_report_is_regenerated_from_its_runs(tmp_path, name):
    if not (RESULTS / name / "runs").is_dir():
        pytest.skip(f"no committed runs of {name}")
    out = tmp_path / name
    shutil.copytree(RESULTS / name, out, ignore=shutil.ignore_patterns("*.safetensors"))
    (out / "report.md").unlink()
    config = f"benchmarks/real/{name}.yaml"
    c = smollm2_real.load_config(str(ROOT / config))
    smollm2_real.report_from_files(argparse.Namespace(config=config), c, out,
                                   smollm2_real.run_plan(c))
    assert (out / "report.md").read_text() == (RESULTS / name / "report.md").read_text()
