"""`risk-kl`: SFT and KL(ref || policy), traded off per sample by a safety risk.

Adaptive regularization (arXiv 2602.17546, *Learning to Stay Safe*):

    beta_i = beta_min + (beta_max - beta_min) * risk_i,     alpha_i = 1 - beta_i
    loss   = mean over response tokens t of  alpha_i(t) * NLL_t + beta_i(t) * KL_t(ref || policy)

with the forward, reference-weighted KL over the full vocabulary, as in `kl`. A risky sample
(risk near 1) is mostly pulled back to the aligned reference, so harmful targets are hardly
learned; a safe one is mostly learned as in SFT. The risk of a sample comes from either

* a **critic**: any alignment signal (`trimtab.signals.build_signal` spec) judging the
  training pair (prompt, target); risk = 1 - its score; or
* an **activation probe** on the reference model's hidden state at the last prompt token
  (`trimtab.probe`); risk = P(harmful prompt).

The pair never changes during training, so every record's risk is computed once in `setup`
(a failing source is retried, then stops the run); only the optional EMA runs over steps.
One reference forward per batch, as in `kl`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from trimtab.config import CheckedConfig, option
from trimtab.errors import TrimtabError
from trimtab.objectives.base import (
    Objective,
    ObjectiveOutput,
    TrainingContext,
    forward_kl,
    forward_logits,
    select_response,
    token_nll,
)
from trimtab.signals import signal_files
from trimtab.signals.base import warn_if_mostly_misaligned
from trimtab.training.processes import judged_in_shares


@dataclass
class RiskKLConfig(CheckedConfig):
    beta_min: float = option(0.1, "KL weight of a sample with risk 0 (its NLL weight is "
                                  "1 - beta)", min=0.0, max=1.0)
    beta_max: float = option(0.9, "KL weight of a sample with risk 1", min=0.0, max=1.0)
    risk_source: str = option("critic", "critic: a judge scores the (prompt, target) pair; "
                                        "probe: an activation probe reads the prompt",
                              choices=("critic", "probe"))
    critic: str = option("classifier", "alignment signal spec of the critic: classifier, "
                                       "hf:PATH, guard:PATH, http:URL, embedding:DIR or "
                                       "keywords (harmful-only data: it calls every answer "
                                       "without a refusal phrase harmful) (README, Alignment "
                                       "signals); never the evaluation judge")
    probe_path: str | None = option(None, "probe file from `trimtab probe train`; none: fit one "
                                          "on the synthetic world's training prompts (cached)")
    probe_layers: list[int] = option([], "candidate layers when the probe is fitted here; empty: "
                                         "a few spread over the depth", min=0)
    probe_pooling: str = option("last", "when the probe is fitted here: read the last prompt "
                                        "token's state, or the mean over the prompt",
                                choices=("last", "mean"))
    granularity: str = option("sample", "one beta per sample, or one per batch from its mean "
                                        "risk", choices=("sample", "batch"))
    ema_decay: float = option(0.0, "EMA decay d of the batch-mean risk over steps; a "
                                   "sample's risk becomes d * EMA + (1 - d) * its own, which "
                                   "damps per-sample differences (pair with granularity "
                                   "batch to smooth one beta per batch); 0 turns it off",
                              min=0.0, max=0.999)
    score_batch_size: int = option(64, "pairs per critic call / prompts per probe forward",
                                   min=1)
    retries: int = option(3, "extra attempts when the risk source fails, before the run stops",
                          min=0)
    retry_wait: float = option(1.0, "seconds before the first retry; doubles on each retry",
                               min=0.0)

    def training_signals(self) -> dict[str, str]:
        """The signal specs this method trains on, by field (see GatedConfig's)."""
        return {"critic": self.critic} if self.risk_source == "critic" else {}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta_min > self.beta_max:
            raise TrimtabError(f"beta_min ({self.beta_min}) is larger than beta_max "
                               f"({self.beta_max}); set beta_min <= beta_max.")


RISK_SOURCE_FIX = "choose another (--critic, --risk-source probe)"


def with_retries(call: Any, what: str, retries: int, wait: float,
                 fix: str = RISK_SOURCE_FIX) -> Any:
    """`call()`, retried with exponential back-off; a clear error once the attempts run out.

    A risk source that is down must stop the run: falling back to beta_min would quietly
    train harmful data with almost no regularization. `fix` names the caller's options.
    """
    for attempt in range(retries + 1):
        try:
            return call()
        except TrimtabError:
            raise  # a configuration problem: retrying cannot fix it
        except Exception as err:  # noqa: BLE001 - any failure of a remote or local judge
            if attempt == retries:
                raise TrimtabError(
                    f"the risk source ({what}) failed {retries + 1} times, last with "
                    f"{type(err).__name__}: {err}. Check that it is reachable and working, or "
                    f"{fix}."
                ) from err
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


def critic_spec(spec: str) -> str:
    """Generative judges (guard, http) rate the pair on the 1-5 harm scale unless told
    otherwise: the critic's rubric in the paper."""
    from trimtab.signals import parse_spec

    kind, _, options = parse_spec(spec)
    return f"{spec},rubric=scale" if kind in ("guard", "http") and "rubric" not in options \
        else spec


def critic_risks(signal: Any, prompts: list[str], targets: list[str], batch_size: int,
                 retries: int, wait: float, what: str,
                 fix: str = RISK_SOURCE_FIX) -> torch.Tensor:
    """1 - score of every (prompt, target) pair, judged in batches (each process of a
    multi-process job judges its share, and every process gets every risk)."""
    judge = getattr(signal, "verdicts", None) or signal.judge  # `verdicts` checks each one

    def risks_of(share: slice) -> list[float]:
        risks: list[float] = []
        p_all, t_all = prompts[share], targets[share]
        for start in range(0, len(p_all), batch_size):
            p, t = p_all[start : start + batch_size], t_all[start : start + batch_size]
            verdicts = with_retries(lambda p=p, t=t: judge(p, t), what, retries, wait, fix)
            if len(verdicts) != len(p):
                raise TrimtabError(f"the critic {what} returned {len(verdicts)} verdicts for "
                                   f"{len(p)} pairs; it must return one per pair.")
            for v in verdicts:
                if not 0.0 <= float(v.score) <= 1.0:  # also rejects NaN
                    raise TrimtabError(f"the critic {what} returned score {v.score!r}, outside "
                                       "[0, 1]; fix the signal's score mapping.")
                risks.append(1.0 - float(v.score))
        return risks

    return torch.tensor(judged_in_shares(risks_of, len(prompts)), dtype=torch.float32)


class RiskKLObjective(Objective):
    name = "risk-kl"
    config_class = RiskKLConfig
    needs_reference = True
    summary = ("(1 - beta) NLL + beta KL(ref || policy), beta per sample from a safety risk "
               "(judge critic or activation probe)")

    def __init__(self, config: RiskKLConfig | None = None, signal: Any | None = None) -> None:
        """`signal`: an `AlignmentSignal` object to use as the critic instead of `critic`."""
        super().__init__(config)
        self.signal = signal
        self.risks: torch.Tensor | None = None  # one per training record, set in `setup`
        self.probe_meta: dict[str, Any] | None = None
        self.setup_seconds = 0.0
        self._ema: float | None = None

    def input_files(self) -> list[str]:
        c = self.config
        if c.risk_source == "probe":
            return [c.probe_path] if c.probe_path else []
        return [] if self.signal is not None else signal_files(*c.training_signals().values())

    # ------------------------------------------------------------------ setup: risks once
    def setup(self, context: TrainingContext) -> None:
        start = time.perf_counter()
        c = self.config
        prompts = [r.prompt for r in context.records]
        if c.risk_source == "critic":
            signal = self.signal
            if signal is None:
                from trimtab.signals import build_signal

                signal = build_signal(critic_spec(c.critic), context)
            what = repr(c.critic) if self.signal is None else type(signal).__name__
            self.risks = critic_risks(signal, prompts, [r.response for r in context.records],
                                      c.score_batch_size, c.retries, c.retry_wait, what)
            warn_if_mostly_misaligned(float((self.risks > 0.5).float().mean()), "risk-kl",
                                      "their KL weight moves toward beta_max and their NLL "
                                      "weight toward 1 - beta_max, so the task is barely learned")
        else:
            self.risks = self._probe_risks(context, prompts)
        self._ema = None
        self.setup_seconds = time.perf_counter() - start

    def _probe_risks(self, context: TrainingContext, prompts: list[str]) -> torch.Tensor:
        from trimtab.probe import ProbeConfig, load_probe, world_probe
        from trimtab.training.run import compute_device, load_model

        c = self.config
        if c.probe_path is None and context.world is None:
            raise TrimtabError(
                "risk_source=probe needs a probe: pass --probe-path FILE (fit one with "
                "`trimtab probe train --model PATH --harmful FILE --benign FILE`), or train "
                "on the synthetic world, where one is fitted automatically."
            )
        # fp32 as when probes are fitted (a frozen bf16 copy would shift the probe's inputs)
        reference = load_model(context.reference_path, context.train_config).to(
            compute_device())
        if c.probe_path is not None:
            probe = load_probe(c.probe_path)
        else:
            probe = world_probe(reference, context.tokenizer, context.reference_path,
                                context.world, context.artifacts_dir or ".",
                                ProbeConfig(layers=list(c.probe_layers),
                                            pooling=c.probe_pooling))
        probe.check_compatible(reference, context.tokenizer,
                               f"the reference model {context.reference_path}")
        self.probe_meta = probe.meta
        risks = with_retries(lambda: probe.risk(reference, context.tokenizer, prompts,
                                                c.score_batch_size),
                             f"probe {c.probe_path or 'fitted on the world'}", c.retries,
                             c.retry_wait)
        return risks.float()  # the reference copy is freed on return

    # ------------------------------------------------------------------ the loss
    def batch_risk(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Risk per row of the batch after the per-batch and EMA options, shape (B,)."""
        if self.risks is None:
            raise TrimtabError("risk-kl was not set up: call objective.setup(context) before "
                               "training (finetune does this).")
        index = batch.get("sample_index")
        if index is None:
            raise TrimtabError("risk-kl needs each batch's `sample_index` to look up the risk "
                               "of its records; use trimtab's CausalCollator (finetune does).")
        risk = self.risks[index.cpu()].to(batch["input_ids"].device)
        if self.config.granularity == "batch":
            risk = risk.mean().expand_as(risk)
        d = self.config.ema_decay
        if d > 0:
            previous = risk.mean().item() if self._ema is None else self._ema
            self._ema = d * previous + (1 - d) * risk.mean().item()
            risk = d * previous + (1 - d) * risk
        return risk

    def compute(self, policy, batch, reference) -> ObjectiveOutput:
        c = self.config
        risk = self.batch_risk(batch)
        beta = c.beta_min + (c.beta_max - c.beta_min) * risk  # (B,)
        labels = batch["labels"]
        resp = select_response(forward_logits(policy, batch), labels)
        ref = select_response(reference.logits(batch), labels)
        nll = token_nll(resp)
        kl = forward_kl(ref.logits, resp.logits)
        b = beta[resp.sample]
        loss = ((1 - b) * nll + b * kl).mean()
        return ObjectiveOutput(loss, {
            "beta": beta.mean().item(), "beta_token": b.mean().item(),
            "risk": risk.mean().item(), "nll": nll.mean().item(), "kl": kl.mean().item(),
        }, resp)
