"""Multi-process training through `accelerate launch`: two CPU processes (gloo, DDP) on the
quick synthetic world train the same model as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trimtab.training.run import load_model

TRAIN = ["--world", "synthetic", "--quick", "--harmful-fraction", "0.1", "--max-steps", "8",
         "--learning-rate", "5e-4", "--logging-steps", "4", "--no-progress"]


def train(method: str, out: Path, processes: int, per_device_batch: int, *extra: str) -> None:
    args = ["train", "--method", method, *TRAIN, "--per-device-train-batch-size",
            str(per_device_batch), "--output-dir", str(out), *extra]
    if processes == 1:
        cmd = [sys.executable, "-m", "trimtab.cli", *args]
    else:
        # --multi_gpu is accelerate's name for one DDP job of several processes; without a GPU
        # trimtab's training arguments make it use the CPU (gloo)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "trimtab.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = "adapter_model.safetensors" if "--lora" in extra else "model.safetensors"
    assert (out / weights).is_file()


def deltas(path: Path, start: Path) -> torch.Tensor:
    trained, initial = load_model(path).state_dict(), load_model(start).state_dict()
    return torch.cat([(trained[k] - initial[k]).flatten() for k in sorted(initial)])


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, quick_refs):
    """DDP over 2 x 8 rows averages two per-process means: what one process computes with
    batches of 8 and 2 accumulation steps. Same samples per step, same update."""
    one, two = tmp_path / "one", tmp_path / "two"
    train("kl", one, 1, 8, "--gradient-accumulation-steps", "2")
    train("kl", two, 2, 8)
    d1, d2 = deltas(one, quick_refs.aligned), deltas(two, quick_refs.aligned)
    assert d1.norm() > 0
    cosine = torch.nn.functional.cosine_similarity(d1, d2, dim=0).item()
    ratio = (d2.norm() / d1.norm()).item()
    assert cosine > 0.999, (cosine, ratio)  # not bit-exact: the all-reduce sums in another order
    assert abs(ratio - 1) < 0.01, (cosine, ratio)


@pytest.mark.parametrize(("method", "extra"), [("gated", ()), ("kl", ("--lora",))])
def test_sampling_and_lora_train_under_ddp(tmp_path, quick_refs, method, extra):
    """gated samples, then runs one forward of the wrapper over training rows and samples (a
    rank's extra rows differ from its peer's); LoRA's reference is the adapter disabled on the
    DDP-wrapped policy."""
    train(method, tmp_path / method, 2, 8, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "risk-kl", "pact", "soft-sft"])
def test_every_objective_trains_under_ddp(tmp_path, quick_refs, method):
    train(method, tmp_path / method, 2, 8)
