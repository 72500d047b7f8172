"""`recover`: restore a few fine-tuned weights to their aligned values, chosen by gradient.

DESIGN.md, "recover" (after arXiv 2504.09757). The harmful direction is the aligned model's
mean last-prompt-token state at layer L over harmful prompts. Each step takes the gradient of
-cos(fine-tuned mean state, direction) and, among the weights of blocks below L whose
restoration is a descent step (sign(w_ft - w_aligned) = sign(grad)), restores the top r by
|grad| exactly to the aligned values. When the validation task score falls more than
`task_drop` (relative) below the fine-tuned model's, the restored weights of that step that
serve the benign direction most are put back, in rounds. The best checkpoint within the task
bound (lowest validation harmful rate) is kept.

Memory: the two models' weights, one `.grad` per eligible weight, and per restored weight its
index and fine-tuned value (the cap keeps that at a few percent). No third model is held:
a checkpoint is the list of steps applied so far, and going back is putting values back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from trimtab.recovery.config import RecoverConfig
from trimtab.recovery.directions import cosine_backward, mean_state
from trimtab.recovery.models import decoder_layers, eligible_parameters, resolve_layer
from trimtab.recovery.validation import RecoveryData, validate


@dataclass
class _Restored:
    """What one step changed in one tensor: flat indices and the fine-tuned values there."""

    index: torch.Tensor
    finetuned: torch.Tensor


@dataclass
class RecoveryResult:
    model: Any
    log: dict[str, Any]
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)


class _Restorer:
    """The fine-tuned model's eligible weights, their aligned values, and the steps applied."""

    def __init__(self, model: Any, aligned: Any, layer: int) -> None:
        aligned_params = dict(aligned.named_parameters())
        self.params = list(eligible_parameters(model, layer))
        self.aligned = {name: aligned_params[name].detach() for name, _ in self.params}
        self.n_eligible = sum(p.numel() for _, p in self.params)
        self.steps: list[dict[str, _Restored]] = []  # applied steps, in order

    @property
    def n_changed(self) -> int:
        return sum(r.index.numel() for step in self.steps for r in step.values())

    def select(self, k: int) -> dict[str, torch.Tensor]:
        """Flat indices of the top-k sign-consistent weights by |grad| (grads are consumed)."""
        tops: list[tuple[torch.Tensor, int, torch.Tensor]] = []
        for i, (name, p) in enumerate(self.params):
            if p.grad is None:
                continue
            # restored weights have w_ft == w_aligned: sign 0, never equal to a nonzero grad's
            same_sign = torch.sign(p.detach() - self.aligned[name]) == torch.sign(p.grad)
            score = p.grad.abs_().mul_(same_sign)  # in place: the gradient is spent after this
            flat = score.view(-1)
            vals, idx = flat.topk(min(k, flat.numel()))
            tops.append((vals, i, idx))
        if not tops:
            return {}
        all_vals = torch.cat([v for v, _, _ in tops])
        owner = torch.cat([torch.full_like(idx, i) for _, i, idx in tops])
        flat_idx = torch.cat([idx for _, _, idx in tops])
        keep = all_vals.topk(min(k, all_vals.numel())).indices
        keep = keep[all_vals[keep] > 0]  # a zero score is not a descent step
        chosen: dict[str, torch.Tensor] = {}
        for i, (name, _) in enumerate(self.params):
            sel = flat_idx[keep[owner[keep] == i]]
            if sel.numel():
                chosen[name] = sel
        return chosen

    @torch.no_grad()
    def restore(self, chosen: dict[str, torch.Tensor]) -> int:
        step: dict[str, _Restored] = {}
        params = dict(self.params)
        for name, idx in chosen.items():
            flat = params[name].data.view(-1)
            step[name] = _Restored(idx, flat[idx].clone())
            flat[idx] = self.aligned[name].reshape(-1)[idx]
        self.steps.append(step)
        return sum(i.numel() for i in chosen.values())

    @torch.no_grad()
    def put_back(self, step: dict[str, _Restored], which: dict[str, torch.Tensor]) -> None:
        """Give the positions `which[name]` (indices into step[name]) their fine-tuned values."""
        params = dict(self.params)
        for name, pos in which.items():
            r = step[name]
            params[name].data.view(-1)[r.index[pos]] = r.finetuned[pos]
            keep = torch.ones(r.index.numel(), dtype=torch.bool, device=r.index.device)
            keep[pos] = False
            step[name] = _Restored(r.index[keep], r.finetuned[keep])

    def rollback_choice(self, step: dict[str, _Restored], n: int) -> dict[str, torch.Tensor]:
        """The n restored weights of `step` whose putting back lowers the benign loss most.

        Putting weight j back moves it by (w_ft - w_aligned); to first order the benign loss
        changes by grad_j * (w_ft - w_aligned), so the most negative values serve it most.
        """
        params = dict(self.params)
        scores, owners, positions = [], [], []
        for name, r in step.items():
            g = params[name].grad
            if g is None or not r.index.numel():
                continue
            delta = r.finetuned - self.aligned[name].reshape(-1)[r.index]
            scores.append(-(g.reshape(-1)[r.index] * delta))
            owners += [name] * r.index.numel()
            positions.append(torch.arange(r.index.numel(), device=r.index.device))
        if not scores:
            return {}
        score = torch.cat(scores)
        pos = torch.cat(positions)
        top = score.topk(min(n, score.numel())).indices.tolist()
        which: dict[str, list[int]] = {}
        for t in top:
            which.setdefault(owners[t], []).append(int(pos[t]))
        return {name: torch.tensor(p, dtype=torch.long, device=step[name].index.device)
                for name, p in which.items()}

    def revert_to(self, n_steps: int) -> None:
        """Undo every step after the first `n_steps`."""
        while len(self.steps) > n_steps:
            step = self.steps.pop()
            self.put_back(step, {n: torch.arange(r.index.numel(), device=r.index.device)
                                 for n, r in step.items()})

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.grad = None


def recover_model(model: Any, aligned: Any, tokenizer: Any, data: RecoveryData,
                  config: RecoverConfig | None = None) -> RecoveryResult:
    """Recover `model` (the fine-tuned one, changed in place) towards `aligned`.

    Returns the model at the best checkpoint and the per-step log.
    """
    config = config or RecoverConfig()
    started = time.perf_counter()
    n_layers = len(decoder_layers(model))
    layer = resolve_layer(config.layer, config.layer_fraction, n_layers)
    model.eval()
    model.requires_grad_(False)
    restorer = _Restorer(model, aligned, layer)
    for _, p in restorer.params:
        p.requires_grad_(True)
    n_total = sum(p.numel() for p in model.parameters())
    k_step = max(1, round(config.restore_fraction * restorer.n_eligible))
    cap = math.floor(config.max_changed_fraction * restorer.n_eligible)
    bs = config.batch_size

    harmful_dir = mean_state(aligned, tokenizer, data.harmful_direction, layer, bs)
    benign_dir = mean_state(model, tokenizer, data.benign_direction, layer, bs)

    def check() -> tuple[float, float]:
        return validate(model, tokenizer, data, config.val_max_new_tokens, bs)

    harm0, task0 = check()
    bound = task0 * (1.0 - config.task_drop)
    entries: list[dict[str, Any]] = [{
        "step": 0, "restored": 0, "rolled_back": 0, "val_harmful_rate": harm0,
        "val_task_score": task0, "changed": 0, "fraction_changed": 0.0, "within_bound": True,
    }]
    best = entries[0]
    stop = f"ran all {config.steps} steps"
    if harm0 <= config.target_harmful_rate:
        stop = f"validation harmful rate {harm0:.3f} already at the target; nothing restored"
    for step_no in range(1, config.steps + 1 if harm0 > config.target_harmful_rate else 1):
        room = cap - restorer.n_changed
        if room <= 0:
            stop = f"reached the cap of {config.max_changed_fraction:g} of eligible weights"
            break
        restorer.zero_grad()
        loss = cosine_backward(model, tokenizer, data.harmful_direction, layer, harmful_dir, bs)
        restored = restorer.restore(restorer.select(min(k_step, room)))
        if restored == 0:
            stop = "no sign-consistent weight left to restore"
            restorer.steps.pop()
            break
        harm, task = check()
        rolled_back, rounds = 0, 0
        step = restorer.steps[-1]
        per_round = max(1, math.ceil(config.rollback_fraction * restored))
        while task < bound and rounds < config.rollback_rounds:
            restorer.zero_grad()
            cosine_backward(model, tokenizer, data.benign_direction, layer, benign_dir, bs)
            which = restorer.rollback_choice(step, per_round)
            if not which:
                break
            restorer.put_back(step, which)
            rolled_back += sum(w.numel() for w in which.values())
            rounds += 1
            harm, task = check()
        changed = restorer.n_changed
        entry = {"step": step_no, "harmful_cosine": -loss, "restored": restored,
                 "rolled_back": rolled_back, "rollback_rounds": rounds,
                 "val_harmful_rate": harm, "val_task_score": task, "changed": changed,
                 "fraction_changed": changed / restorer.n_eligible,
                 "within_bound": task >= bound}
        entries.append(entry)
        if task < bound:
            stop = (f"rollback could not bring the task score back within the bound at step "
                    f"{step_no} ({task:.3f} < {bound:.3f}); kept the best checkpoint so far")
            break
        if (harm, -task) < (best["val_harmful_rate"], -best["val_task_score"]):
            best = entry
        if harm <= config.target_harmful_rate:
            stop = f"validation harmful rate {harm:.3f} reached the target"
            break
    restorer.revert_to(best["step"])
    restorer.zero_grad()
    model.requires_grad_(False)
    changed = restorer.n_changed
    log = {
        "layer": layer, "n_layers": n_layers, "eligible_weights": restorer.n_eligible,
        "total_weights": n_total, "restore_per_step": k_step, "cap_weights": cap,
        "task_bound": bound, "best_step": best["step"], "stopped": stop,
        "changed_weights": changed,
        "max_changed_weights": max(e["changed"] for e in entries),
        "fraction_changed": changed / restorer.n_eligible,
        "fraction_changed_of_all": changed / n_total,
        "before": {"val_harmful_rate": harm0, "val_task_score": task0},
        "after": {"val_harmful_rate": best["val_harmful_rate"],
                  "val_task_score": best["val_task_score"]},
        "steps": entries,
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    return RecoveryResult(model, log, seconds=time.perf_counter() - started)
