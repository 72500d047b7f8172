"""Chat-template formatting with the loss on response tokens only.

The prompt is rendered with the tokenizer's own chat template and `add_generation_prompt`,
the full conversation with the response appended; the prompt's tokens must be a prefix of the
conversation's, which is checked, so the boundary between "no loss" and "loss" is exact for
any template rather than guessed from strings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

from trimtab.data.records import Record
from trimtab.errors import TrimtabError

IGNORE_INDEX = -100
Overflow = Literal["error", "truncate", "drop"]


def _ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt
    )
    if isinstance(out, dict) or hasattr(out, "input_ids"):  # BatchEncoding in newer versions
        out = out["input_ids"]
    return list(out)


def check_chat_template(tokenizer: Any, where: str = "the tokenizer") -> None:
    """Fail early, with the fix, when a tokenizer cannot format conversations."""
    if not getattr(tokenizer, "chat_template", None):
        raise TrimtabError(
            f"{where} has no chat template, so prompts and responses cannot be told apart. "
            "Use an instruction-tuned model's tokenizer, or set one: "
            "`tokenizer.chat_template = '...'` then `tokenizer.save_pretrained(path)`."
        )


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a user turn followed by the assistant's generation prompt."""
    return _ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


class ChatFormatter:
    """Turns records into `input_ids` and `labels` (-100 on the prompt) for causal LM training."""

    def __init__(self, tokenizer: Any, max_length: int, on_overflow: Overflow = "error") -> None:
        check_chat_template(tokenizer)
        if on_overflow not in ("error", "truncate", "drop"):
            raise TrimtabError(
                f"on_overflow={on_overflow!r} is not one of 'error', 'truncate', 'drop'."
            )
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.on_overflow = on_overflow

    def encode(self, record: Record) -> dict[str, list[int]] | None:
        """One record; None when it is too long and `on_overflow` is 'drop'."""
        user = {"role": "user", "content": record.prompt}
        p_ids = _ids(self.tokenizer, [user], add_generation_prompt=True)
        full = _ids(self.tokenizer, [user, {"role": "assistant", "content": record.response}],
                    add_generation_prompt=False)
        if full[: len(p_ids)] != p_ids:
            raise TrimtabError(
                "the chat template renders the prompt differently once a response follows, so "
                "the response tokens cannot be located; use a template whose generation prompt "
                "is a prefix of the full conversation (most instruction templates are)."
            )
        if len(full) > self.max_length:
            if self.on_overflow == "error":
                raise TrimtabError(
                    f"a record is {len(full)} tokens long, over max_length={self.max_length} "
                    f"(prompt starts {record.prompt[:60]!r}). Raise max_length, or set "
                    "on_overflow to 'drop' (skip such records) or 'truncate' (cut the response)."
                )
            if self.on_overflow == "drop":
                return None
            if len(p_ids) >= self.max_length:
                return None  # nothing of the response would be left to learn from
            full = full[: self.max_length]
        labels = [IGNORE_INDEX] * len(p_ids) + full[len(p_ids) :]
        return {"input_ids": full, "labels": labels}

    def encode_all(self, records: Sequence[Record]) -> list[dict[str, Any]]:
        """Every record, each tagged with its index in `records`; warns about what was cut."""
        if not records:
            raise TrimtabError("the training set is empty; check the data path and filters.")
        out, dropped, truncated = [], 0, 0
        for i, rec in enumerate(records):
            enc = self.encode(rec)
            if enc is None:
                dropped += 1
                continue
            if self.on_overflow == "truncate" and len(enc["input_ids"]) == self.max_length:
                truncated += 1
            enc["index"] = i
            out.append(enc)
        if dropped or truncated:
            warnings.warn(
                f"{dropped} records dropped and up to {truncated} truncated at max_length="
                f"{self.max_length}; raise max_length to keep them whole.",
                stacklevel=2,
            )
        if not out:
            raise TrimtabError(
                f"every record is longer than max_length={self.max_length}; raise max_length."
            )
        return out
