"""Directions in hidden-state space: the mean last-prompt-token state at a layer.

The harmful direction is read from the aligned model on harmful prompts (where it decides to
refuse); the benign direction from the fine-tuned model on task prompts (where it does the
task). `cosine_backward` puts the gradient of -cos(mean state, direction) into `.grad` in
two passes, so memory stays at one batch of activations however many prompts are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from trimtab.data.formatting import prompt_ids
from trimtab.recovery.models import decoder_layers


class _Stop(Exception):
    """Raised by the hook once layer L has run: the layers above it are not needed."""


def _batches(tokenizer: Any, prompts: Sequence[str], batch_size: int, device: torch.device):
    """Right-padded chat-formatted prompts with the index of each row's last token."""
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        last = torch.tensor([len(seq) - 1 for seq in chunk])
        yield ids.to(device), mask.to(device), last.to(device)


def _last_states(model: Any, layer: int, ids: torch.Tensor, mask: torch.Tensor,
                 last: torch.Tensor) -> torch.Tensor:
    """Hidden state after block `layer` (HF's hidden_states[layer]) at each row's last token."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = decoder_layers(model)[layer - 1].register_forward_hook(hook)
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    states = captured["h"]
    return states[torch.arange(len(last), device=states.device), last].float()


def mean_state(model: Any, tokenizer: Any, prompts: Sequence[str], layer: int,
               batch_size: int) -> torch.Tensor:
    """Mean last-prompt-token hidden state at `layer` over `prompts` (no gradients)."""
    device = next(model.parameters()).device
    total = None
    with torch.no_grad():
        for ids, mask, last in _batches(tokenizer, prompts, batch_size, device):
            s = _last_states(model, layer, ids, mask, last).sum(0)
            total = s if total is None else total + s
    assert total is not None, "no prompts"
    return total / len(prompts)


def cosine_backward(model: Any, tokenizer: Any, prompts: Sequence[str], layer: int,
                    direction: torch.Tensor, batch_size: int) -> float:
    """Accumulate d(-cos(mean state, direction))/d(weights) into `.grad`; return -cos.

    Pass 1 finds the mean state without gradients; the loss's gradient with respect to the
    mean is then a fixed vector g, and pass 2 back-propagates <state_i, g> / n batch by batch,
    which is exactly the gradient of the loss over all prompts.
    """
    mean = mean_state(model, tokenizer, prompts, layer, batch_size).requires_grad_(True)
    loss = -F.cosine_similarity(mean, direction.to(mean), dim=0)
    (g,) = torch.autograd.grad(loss, mean)
    device = next(model.parameters()).device
    for ids, mask, last in _batches(tokenizer, prompts, batch_size, device):
        states = _last_states(model, layer, ids, mask, last)
        ((states @ g).sum() / len(prompts)).backward()
    return float(loss.detach())
