"""Batched greedy generation: the responses every metric is computed from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from trimtab.data.formatting import check_chat_template, prompt_ids
from trimtab.errors import raise_if_terminated


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's own end-of-turn ids (a list for Llama-3 or Gemma) plus the tokenizer's eos."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in (value if isinstance(value, list | tuple) else [value]):
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 32,
             batch_size: int = 64, progress: bool = False, desc: str = "generating") -> list[str]:
    """Greedy responses to `prompts`, formatted with the tokenizer's chat template.

    Prompts are sorted by length and left-padded per batch (less padding, same results), and
    the responses are returned in the input order.
    """
    check_chat_template(tokenizer)
    device = next(model.parameters()).device
    stop = stop_token_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        raise_if_terminated()  # a SIGTERM whose exception a library's __del__ swallowed
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded[i]
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=pad,
            eos_token_id=stop,
        )
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return out
