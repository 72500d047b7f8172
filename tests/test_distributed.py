"""Multi-process training through `accelerate launch`: two CPU processes (gloo, DDP) on the
quick synthetic world train the same model as one process with the same global batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trimtab.training.processes import share_of
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


def run_two_processes(script: Path, *args: Path) -> None:
    """`script ARGS` as one 2-process job; a stalled process fails the test after 2 minutes
    (the scripts take seconds) and the whole process group is killed, so none is left
    waiting."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(script), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a process stalled: the 2-process job did not finish in 120 s")
    assert proc.returncode == 0, err[-3000:]


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


@pytest.mark.parametrize(("method", "extra"), [
    ("gated", ()), ("kl", ("--lora",)),
    ("pact", ("--lam", "0.1", "--mass-weight", "1", "--mass-critic", "keywords"))])
def test_sampling_lora_and_setup_judging_train_under_ddp(tmp_path, quick_refs, method, extra):
    """gated samples, then runs one forward of the wrapper over training rows and samples (a
    rank's extra rows differ from its peer's); LoRA's reference is the adapter disabled on the
    DDP-wrapped policy. gated's pre-gate (targets and refusals) and pact's mass critic judge
    their training pairs in shares gathered on both processes."""
    train(method, tmp_path / method, 2, 8, *extra)


@pytest.mark.parametrize("n", [0, 1, 7, 8])
def test_the_processes_shares_cover_every_item_once_in_order(n):
    for count in (1, 3):
        shares = [range(n)[share_of(n, index, count)] for index in range(count)]
        assert [i for share in shares for i in share] == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_shares_are_gathered_in_order_and_a_failure_reaches_every_process(tmp_path):
    """A judge that fails on one process must stop both: the other is not left waiting in
    the gather for verdicts that never come."""
    import json

    script = Path(__file__).with_name("ddp_shares_script.py")
    run_two_processes(script, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["gathered"] for r in ranks] == [[i * i for i in range(7)]] * 2
    assert ranks[1]["error"] == "ValueError: judge down"
    assert ranks[0]["error"].startswith("TrimtabError: process 1 of 2 failed")
    assert "ValueError: judge down" in ranks[0]["error"]


def test_the_processes_share_the_judging_of_the_training_pairs(tmp_path, quick_refs,
                                                                quick_world):
    """risk-kl's critic under 2 processes: each judges its share of the training pairs and
    every process gets every risk, so an HTTP judge sees each pair once, not once per
    process (before: 2 x the pairs)."""
    from collections import Counter

    from test_http_judge import CONVERSATION, JudgeServer

    from trimtab.data.mixing import mix
    from trimtab.training.config import TrainConfig

    records = mix(quick_world.task_records("general"), quick_world.splits.harmful_finetune, 0.1,
                  seed=TrainConfig().seed)
    with JudgeServer() as server:
        train("risk-kl", tmp_path / "risk-kl", 2, 8, "--critic",
              f"http:{server.url},cache=false")
    judged = Counter(CONVERSATION.search(b["messages"][-1]["content"]).groups()
                     for b in server.bodies)
    assert len(records) > 0
    assert judged == Counter((r.prompt, r.response) for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "risk-kl", "pact", "soft-sft"])
def test_every_objective_trains_under_ddp(tmp_path, quick_refs, method):
    train(method, tmp_path / method, 2, 8)


def test_a_nonfinite_batch_on_one_rank_is_skipped_without_stalling_the_other(tmp_path):
    """`on_nonfinite_loss=skip` under DDP: the rank with the NaN must still take part in the
    gradient all-reduce, or its peer waits forever and the next step fails; both ranks must
    end with the same weights."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from trimtab.training.run import save_model
    from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["what is the first word in : apple stone river zorb ?"])
    torch.manual_seed(0)
    save_model(LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)), tok, tmp_path / "m")
    script = Path(__file__).with_name("ddp_nonfinite_script.py")
    run_two_processes(script, tmp_path / "m", tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["skipped"] for r in ranks] == [1, 0]
    assert ranks[0]["weights"] == ranks[1]["weights"]
