"""What every objective shares: its interface and the token-level arithmetic it builds on.

An objective receives the policy, a batch from `CausalCollator` and, when it asks for one, a
`Reference` that returns the frozen reference model's logits. It returns a loss and a few
scalar diagnostics that the trainer averages into its logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from trimtab.config import check_config
from trimtab.data.formatting import IGNORE_INDEX
from trimtab.errors import TrimtabError

if TYPE_CHECKING:
    from trimtab.data.records import Record
    from trimtab.training.config import TrainConfig
    from trimtab.training.reference import Reference


@dataclass
class TrainingContext:
    """What an objective may need beyond a batch, handed to `Objective.setup` once.

    `records[batch["sample_index"][i]]` is the record behind row i of a batch, so an objective
    can score prompts and targets with an alignment signal. `base_path` (the unaligned model)
    and `world` exist only where a world provides them (the synthetic world does).
    `artifacts_dir` is a cache folder for what an objective builds (a probe, a token set).
    """

    records: Sequence[Record]
    tokenizer: Any
    model_path: Path
    reference_path: Path
    train_config: TrainConfig
    base_path: Path | None = None
    world: Any | None = None
    artifacts_dir: Path | None = None


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    # the policy's response logits of the training rows, so a composed objective can add a
    # penalty on them without a second forward pass
    resp: ResponseLogits | None = None


@dataclass
class ResponseLogits:
    """Logits at the positions that predict response tokens, flattened to (n_tokens, vocab).

    Selecting the response positions before any softmax keeps the extra memory of KL-style
    terms proportional to the response tokens, not to the padded batch.
    """

    logits: torch.Tensor  # (n, vocab)
    targets: torch.Tensor  # (n,)
    position: torch.Tensor  # (n,) index of the token within its response, from 0
    sample: torch.Tensor  # (n,) row of the batch each token belongs to
    # the per-token CE once `token_nll` has computed it; the objectives that compute it train
    # on it, so a penalty term may reuse it and count on its dense gradient reaching `logits`
    nll: torch.Tensor | None = None


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """True at positions t whose logits predict a response token labels[t + 1]."""
    return labels[:, 1:] != IGNORE_INDEX


def select_response(logits: torch.Tensor, labels: torch.Tensor) -> ResponseLogits:
    mask = response_mask(labels)
    shifted = logits[:, :-1]
    # position within the response: running count of response tokens in each row
    position = (mask.cumsum(dim=1) - 1)[mask]
    sample = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(mask)[mask]
    return ResponseLogits(shifted[mask], labels[:, 1:][mask], position, sample)


def forward_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def token_nll(resp: ResponseLogits) -> torch.Tensor:
    """Per-token negative log-likelihood of the response tokens, shape (n,); computed once and
    kept on `resp`."""
    if resp.nll is None:
        resp.nll = F.cross_entropy(resp.logits.float(), resp.targets, reduction="none")
    return resp.nll


def per_sample_mean(values: torch.Tensor, sample: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Mean of token values per batch row (rows with no response tokens get 0)."""
    total = torch.zeros(n_samples, device=values.device, dtype=values.dtype)
    count = torch.zeros(n_samples, device=values.device, dtype=values.dtype)
    total.index_add_(0, sample, values)
    count.index_add_(0, sample, torch.ones_like(values))
    return total / count.clamp(min=1)


def forward_kl(ref_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """KL(ref || policy) per row over the last axis, in float32 for stability."""
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    pol_logp = F.log_softmax(policy_logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - pol_logp)).sum(dim=-1)


class Objective:
    """Base class: subclasses set `name`, `config_class`, `needs_reference` and `compute`."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    needs_reference: ClassVar[bool] = False
    # generates from the policy during training (outside the wrapper's forward)
    samples_from_policy: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if is_dataclass(self.config_class):  # a composite's config is its parts' (checked)
            if not isinstance(self.config, self.config_class):
                raise TrimtabError(f"{self.name} takes a {self.config_class.__name__}, got "
                                   f"{type(self.config).__name__}; build one with "
                                   f"`{self.config_class.__name__}(...)` or leave it out.")
            check_config(self.config, f"{self.name} config")

    def input_files(self) -> list[str]:
        """Files or folders the run reads whose contents shape training (a token file, a
        probe, a judge's folder): a checkpoint records their hashes, so one rebuilt at the same
        path is not resumed from unnoticed."""
        return []

    def setup(self, context: TrainingContext) -> None:
        """Called once before training; objectives that need signals, probes or token sets
        load or build them here, so bad input fails before the first step."""

    def compute(self, policy: Any, batch: dict[str, torch.Tensor],
                reference: Reference | None) -> ObjectiveOutput:
        raise NotImplementedError

    # Objectives whose loss is "CE + a term" also define `penalty(resp, batch, reference)`
    # returning (term, metrics) for the term alone: they can then be added to another objective
    # (`trimtab.objectives.composite`). Objectives that reweight or replace the CE do not.
    penalty: ClassVar[Any] = None

    def __call__(self, policy: Any, batch: dict[str, torch.Tensor],
                 reference: Reference | None = None) -> ObjectiveOutput:
        return self.compute(policy, batch, reference)
