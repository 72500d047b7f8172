"""A Hugging Face sequence-classification model as a signal (`hf:PATH`).

The model reads the prompt and the response as a text pair (or the response alone) and its
softmax gives the probability of the label that means aligned; a model whose labels say the
opposite (`toxic`, `unsafe`) is read as 1 - P(that label).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trimtab.config import CheckedConfig, option
from trimtab.errors import TrimtabError
from trimtab.signals.base import REASONS, AlignmentSignal, Verdict

ALIGNED_NAMES = ("safe", "ok", "aligned", "benign", "harmless", "non-toxic", "not_toxic",
                 "neutral")
MISALIGNED_NAMES = ("unsafe", "harmful", "toxic", "misaligned", "jailbreak", "injection")


@dataclass
class HFSignalConfig(CheckedConfig):
    aligned_label: str | None = option(None, "label (name or index) meaning aligned; none: "
                                             "found by name (safe, ok, benign, ...)")
    misaligned_label: str | None = option(None, "label meaning misaligned, read as "
                                                "1 - P(label); used when aligned_label is none")
    pair: bool = option(True, "feed (prompt, response) as a text pair; false: the response "
                              "alone")
    batch_size: int = option(32, "pairs per forward pass", min=1)
    max_length: int = option(512, "longest tokenized input (longer ones are truncated)", min=8)
    trust_remote_code: bool = option(False, "run model code shipped with the checkpoint")


class HFClassifierSignal(AlignmentSignal):
    name = "hf"

    def __init__(self, path: str | Path, config: HFSignalConfig | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.config = c = config or HFSignalConfig()
        self.path = str(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path,
                                                           trust_remote_code=c.trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.path, trust_remote_code=c.trust_remote_code)
        except (OSError, ValueError) as err:
            raise TrimtabError(f"cannot load a sequence-classification model from {path}: "
                               f"{err}. Pass a folder written by save_pretrained.") from err
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.labels = [str(self.model.config.id2label[i]) for i in
                       range(self.model.config.num_labels)]
        self.index, self.inverted = self._resolve_label()
        self._accepts_token_types = "token_type_ids" in inspect.signature(
            self.model.forward).parameters

    def _find(self, wanted: str) -> int:
        names = [n.lower() for n in self.labels]
        if wanted.lower() in names:
            return names.index(wanted.lower())
        if wanted.isdigit() and int(wanted) < len(self.labels):
            return int(wanted)
        raise TrimtabError(f"label {wanted!r} is not one of the model's labels {self.labels}; "
                           "pass one of them (or its index).")

    def _resolve_label(self) -> tuple[int, bool]:
        c = self.config
        if c.aligned_label is not None:
            return self._find(c.aligned_label), False
        if c.misaligned_label is not None:
            return self._find(c.misaligned_label), True
        names = [n.lower() for n in self.labels]
        for n in ALIGNED_NAMES:
            if n in names:
                return names.index(n), False
        for n in MISALIGNED_NAMES:
            if n in names:
                return names.index(n), True
        raise TrimtabError(
            f"cannot tell which of the labels {self.labels} of {self.path} means aligned; "
            "pass it in the spec, e.g. 'hf:PATH,aligned_label=LABEL_0' or "
            "'hf:PATH,misaligned_label=LABEL_1'."
        )

    @torch.no_grad()
    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        c = self.config
        out: list[Verdict] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(prompts), c.batch_size):
            ps = list(prompts[start:start + c.batch_size])
            rs = list(responses[start:start + c.batch_size])
            enc = (self.tokenizer(ps, rs, padding=True, truncation=True,
                                  max_length=c.max_length, return_tensors="pt") if c.pair
                   else self.tokenizer(rs, padding=True, truncation=True,
                                       max_length=c.max_length, return_tensors="pt"))
            if not self._accepts_token_types:
                enc.pop("token_type_ids", None)
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
            probs = (torch.sigmoid(logits) if logits.shape[-1] == 1 else logits.softmax(-1))
            for row in probs:
                p = float(row[self.index] if logits.shape[-1] > 1 else row[0])
                score = 1.0 - p if self.inverted else p
                top = self.labels[int(row.argmax())].lower() if logits.shape[-1] > 1 else ""
                reason = ("ok" if score >= 0.5 else top if top in REASONS[:3] else "harmful")
                out.append(Verdict(min(max(score, 0.0), 1.0), reason))
        return out
