"""Memory of pact's backward pass against sft's, and against the dense column pick it replaced.

    python benchmarks/pact_memory.py [--out benchmarks/results/pact_memory] [--vocab 49152 879]

The target (issue 5): the loss over the safety tokens must not materialise a full-vocabulary
tensor beyond the logits already computed. pact picks its k columns of the logits with a
gather whose gradient is sparse, so its backward adds n * k numbers into the CE's (n, V)
gradient. Picking them with a dense gradient (an index `logits[:, S]` or a gather, as pact did
before) makes autograd build a second (n, V) tensor of zeros for that pick's gradient first;
the baseline here is that single pick with a dense gradient. All the losses run on the
same model and batch in one process, and memory is read from `torch.profiler`'s allocation
events (no tensor is held by the measurement): the peak above the memory in use when the
backward starts, and every allocation of at least one (n, V) float32 tensor. Each loss's
forward + backward is also timed, without the profiler, as a median over interleaved rounds.

The model is a 2-layer Llama with random weights and SmolLM2's vocabulary (49,152), then the
synthetic world's (879); the batch holds 516 response tokens. At 49,152 the logits and their
gradients dominate, as they do for a small model with a large vocabulary. Figures are in MB
and ms, and as ratios to sft.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from common import machine
from torch.profiler import ProfilerActivity, profile

import trimtab.objectives.pact as pact_module
from trimtab.evaluation.results import write_json_atomic
from trimtab.objectives.base import response_mask
from trimtab.objectives.kl import KLObjective
from trimtab.objectives.pact import PACTConfig, PACTObjective
from trimtab.objectives.sft import SFTObjective
from trimtab.safety_tokens import SafetyTokens
from trimtab.training.reference import Reference


def tiny_llama(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def make_batch(vocab: int, rows: int, prompt: int, response: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, prompt + response), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "sample_index": torch.arange(rows)}


@contextlib.contextmanager
def dense_column_pick():
    """The same single column pick with an ordinary dense gradient. (pact before the sparse
    pick: one such buffer, and with the mass term two, as it gathered the target apart.)"""
    sparse = pact_module.columns
    pact_module.columns = lambda logits, index, sparse_grad: logits.gather(1, index)
    try:
        yield
    finally:
        pact_module.columns = sparse


def backward_memory(loss: torch.Tensor, n_v_bytes: int) -> dict[str, float]:
    """Peak bytes in use above the start of the backward, and its (n, V)-or-larger allocations,
    from the profiler's raw allocation and free events (each with its size and time)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in changes:
        level += nbytes
        peak = max(peak, level)
    big = sum(1 for _, nbytes in changes if nbytes >= n_v_bytes)
    return {"peak_mb": round(peak / 2**20, 2), "allocations_of_n_by_v_or_more": big}


def measure(vocab: int, args: argparse.Namespace) -> dict:
    """Backward memory (profiled) and step time (not profiled) of every loss at one vocabulary
    size; the losses take turns in each repeat, so all see the same machine state."""
    policy, ref_model = tiny_llama(vocab, 0), tiny_llama(vocab, 1)
    batch = make_batch(vocab, args.rows, 16, args.response + 1)
    n = int(response_mask(batch["labels"]).sum())
    n_v_bytes = n * vocab * 4
    ids = list(range(10, 10 + args.k))
    raw = [1.0 / (1 + i % 7) for i in range(args.k)]
    norm = sum(w * w for w in raw) ** 0.5
    tokens = SafetyTokens(token_ids=ids, tokens=[str(i) for i in ids], k=args.k, n_positions=8,
                          weights=[w / norm for w in raw], vocab_size=vocab,
                          vocab_hash="benchmark", aligned="random", base=None,
                          weights_from="benchmark")
    reference = Reference(policy, ref_model)
    losses = {"sft": lambda: SFTObjective()(policy, batch).loss}
    for mass in (0.0, 1.0):
        objective = PACTObjective(PACTConfig(mass_weight=mass, cache_reference=False))
        objective.set_tokens(tokens)
        suffix = "" if mass == 0 else "_mass"
        losses[f"pact{suffix}"] = lambda o=objective: o(policy, batch, reference).loss

        def dense(o=objective):
            with dense_column_pick():
                return o(policy, batch, reference).loss
        losses[f"pact{suffix}_dense_pick"] = dense
    losses["kl"] = lambda: KLObjective()(policy, batch, reference).loss

    memory: dict[str, list[dict[str, float]]] = {name: [] for name in losses}
    seconds: dict[str, list[float]] = {name: [] for name in losses}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not timed
        for name, loss in losses.items():
            if repeat < 3:
                memory[name].append(backward_memory(loss(), n_v_bytes))
                policy.zero_grad(set_to_none=True)
            started = time.perf_counter()
            loss().backward()
            if repeat:
                seconds[name].append(time.perf_counter() - started)
            policy.zero_grad(set_to_none=True)
    result = {name: {"peak_mb": min(r["peak_mb"] for r in rs),
                     "allocations_of_n_by_v_or_more": rs[0]["allocations_of_n_by_v_or_more"],
                     "median_step_ms": round(1e3 * statistics.median(seconds[name]), 2)}
              for name, rs in memory.items()}
    sft = result["sft"]
    for r in result.values():
        r["peak_ratio_to_sft"] = round(r["peak_mb"] / sft["peak_mb"], 3)
        r["extra_mb_over_sft"] = round(r["peak_mb"] - sft["peak_mb"], 2)
        r["step_ratio_to_sft"] = round(r["median_step_ms"] / sft["median_step_ms"], 3)
    return {"vocab": vocab, "n_response_tokens": n,
            "one_n_by_v_float32_mb": round(n_v_bytes / 2**20, 2), "losses": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/pact_memory")
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 879],
                        help="vocabulary sizes (SmolLM2's, the synthetic world's)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--k", type=int, default=50, help="safety tokens (50 per 50k vocab)")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (memory: 3)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    started = time.perf_counter()
    runs = [measure(vocab, args) for vocab in args.vocab]
    out = {"command": "python benchmarks/pact_memory.py " + " ".join(
               f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items()),
           "k": args.k, "runs": runs, "seconds": round(time.perf_counter() - started, 1),
           "machine": machine()}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.out) / "results.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
