"""Batched generation without gradient, for objectives that learn from the policy's own samples.

`sample_completions` draws K completions per prompt in one left-padded `generate` call per
chunk (the policy in eval mode, then back to its former mode) and returns token ids, so the
objective can score the texts and then run ONE forward pass with gradient over all of them
(`completion_batch`), instead of re-tokenising text. Under PEFT the adapter stays enabled:
the samples come from the policy being trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trimtab.data.formatting import IGNORE_INDEX, check_chat_template, prompt_ids
from trimtab.evaluation.generation import stop_token_ids
from trimtab.training.reference import _unwrap


@dataclass
class Completions:
    """K completions per prompt, row-major: row i * k + j is sample j of prompt i."""

    prompt_ids: list[list[int]]  # one per row (repeated K times)
    completion_ids: list[list[int]]  # up to and including the first stop token
    texts: list[str]
    k: int


@torch.no_grad()
def generate_ids(model: Any, encoded: Sequence[Sequence[int]], *, pad_token_id: int,
                 stop_ids: Sequence[int], max_new_tokens: int, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 num_return_sequences: int = 1,
                 batch_size: int = 64) -> list[list[int]]:
    """New token ids for each encoded prompt (`num_return_sequences` rows per prompt, in
    order), cut after the first stop token; the model is left in the mode it was in."""
    model = _unwrap(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    stop = set(stop_ids)
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            width = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, width - len(seq):] = torch.tensor(list(seq))
                mask[row, width - len(seq):] = 1
            kwargs: dict[str, Any] = {"do_sample": do_sample}
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                                 use_cache=True,
                                 eos_token_id=list(stop_ids),
                                 num_return_sequences=num_return_sequences, **kwargs)
            for row in gen[:, width:].tolist():
                cut: list[int] = []
                for tok in row:
                    cut.append(tok)
                    if tok in stop:
                        break
                out.append(cut)
    finally:
        model.train(was_training)
    return out


def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[str], k: int, *,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       max_new_tokens: int = 32, batch_size: int = 64) -> Completions:
    """K sampled completions per prompt (chat-formatted), without gradient."""
    check_chat_template(tokenizer)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    # batch_size counts generated rows, so the memory of one call does not grow with k
    per_call = max(1, batch_size // k)
    new = generate_ids(model, encoded, pad_token_id=tokenizer.pad_token_id,
                       stop_ids=stop_token_ids(_unwrap(model), tokenizer),
                       max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                       top_p=top_p, top_k=top_k, num_return_sequences=k, batch_size=per_call)
    rows = [e for e in encoded for _ in range(k)]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    return Completions(rows, new, [t.strip() for t in texts], k)


def completion_batch(prompt_rows: Sequence[Sequence[int]],
                     completion_rows: Sequence[Sequence[int]], pad_token_id: int,
                     device: Any = None) -> dict[str, torch.Tensor]:
    """Right-padded (prompt + completion) rows with labels on the completion tokens only,
    the same layout `CausalCollator` gives training data, so `select_response` applies."""
    seqs = [[*p, *c] for p, c in zip(prompt_rows, completion_rows, strict=True)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, s) in enumerate(zip(prompt_rows, seqs, strict=True)):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, len(p):len(s)] = torch.tensor(s[len(p):], dtype=torch.long)
        mask[i, :len(s)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch
