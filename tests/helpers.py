"""Small builders shared by the objective tests: a tiny Llama and a batch of records."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trimtab.data.collator import CausalCollator
from trimtab.data.formatting import ChatFormatter
from trimtab.data.records import Record
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-block Llama, seeded, in eval mode: big enough for real logits, fast on a CPU."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)).eval()


def word_tokenizer(records: Sequence[Record]):
    return build_word_tokenizer(t for r in records for t in (r.prompt, r.response))


def collate(tokenizer, records: Sequence[Record]) -> dict[str, torch.Tensor]:
    features = ChatFormatter(tokenizer, max_length=64).encode_all(records)
    return CausalCollator(pad_token_id=tokenizer.pad_token_id)(features)
