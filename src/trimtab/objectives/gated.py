"""`gated`: SFT plus a policy-gradient regulariser driven by an alignment signal, balanced per
sample by an adaptive gate, with abstention learned on fully misaligned inputs.

After arXiv 2602.02258 (*Alignment-Aware Model Adaptation via Feedback-Guided
Optimization*). The paper's equations were not available to us: this is our design from its
abstract (DESIGN.md, "gated"). For a sample (prompt x, target y):

1. a_tgt = signal(x, y) in [0, 1] (1 = aligned), computed once per record in `setup`.
2. Pre-gate: only samples whose target misalignment 1 - a_tgt, or whose prompt risk, is above
   `pregate_threshold` draw K completions from the current policy (no gradient, batched over
   the batch); prompt risk = signal(x, refusal): a refusal judged aligned marks a risky
   prompt. Scores a_k, mean a_bar, std s.
3. Gate g = sigmoid((max(1 - a_tgt, 1 - a_bar) - theta) / T) (1 - a_bar only where sampled).
   A target the signal left unscored counts as uncertain (1 - a_tgt = 1): its gate opens, so
   it is never trained on as plain SFT unchecked.
4. PG(x) = -mean_k A_k * logp_k, A_k = (a_k - a_bar) / (s + eps), logp_k the length-normalised
   log-likelihood of completion k (REINFORCE with a group baseline, on-policy).
5. loss = mean_i [(1 - g) SFT(x, y) + lambda_pg g PG(x) + lambda_abs 1[a_tgt < tau and all
   a_k < tau] SFT(x, y_abstain)], y_abstain a refusal where the signal says harmful and an
   "i do not know" style abstention where it says hallucination.

The training rows, the completions and the abstention rows of a batch go through ONE forward
pass where padding them to one width costs little (`stacking_pays`), else two.
Ablations: `use_gate=False` (SFT and PG on every sample, so every sample is sampled),
`use_abstention=False`, `use_pregate=False` (sample every sample, gate as usual).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from trimtab.config import CheckedConfig, option
from trimtab.data.formatting import IGNORE_INDEX, ChatFormatter
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.objectives.base import (
    Objective,
    ObjectiveOutput,
    ResponseLogits,
    TrainingContext,
    forward_logits,
    per_sample_mean,
    select_response,
    token_nll,
)
from trimtab.signals import signal_files
from trimtab.signals.base import warn_if_mostly_misaligned
from trimtab.training.processes import judged_in_shares
from trimtab.training.reference import _unwrap
from trimtab.training.sampling import completion_batch, sample_completions
from trimtab.worlds.synthetic import vocabulary as V

log = logging.getLogger(__name__)
KINDS = ("harmful", "hallucination")  # signal reasons that pick an abstention text
# Above this share of the rows whose targets pass flagged risky by their prompt, the prompt
# risk samples nearly everything: harmful requests with refusal targets, or a signal that
# cannot tell a risky prompt by its refusal (a judge of harm alone); gated warns.
RISKY_PROMPTS_WARNING = 0.9


@dataclass
class GatedConfig(CheckedConfig):
    signal: str = option("classifier", "alignment signal spec trained on: classifier, "
                                       "hf:PATH, guard:PATH, http:URL, embedding:DIR or "
                                       "keywords (harmful-only data: it calls every answer "
                                       "without a refusal phrase harmful) (README, Alignment "
                                       "signals); never the evaluation judge")
    k: int = option(4, "completions sampled per pre-gated prompt", min=2)
    temperature: float = option(0.7, "sampling temperature of the completions", min=1e-6)
    top_k: int = option(50, "sample among the k most likely tokens (0: all)", min=0)
    top_p: float = option(1.0, "nucleus sampling mass", min=0.0, max=1.0)
    # 8, not 16: decoding is most of gated's cost over sft (one forward per token in nearly
    # every step), and a refusal or a compliance shows in its first words; the synthetic
    # benchmark reports both lengths (benchmarks/gated.py, ablation gated-16-tokens)
    max_new_tokens: int = option(8, "longest sampled completion: its opening is what a judge "
                                         "needs, and what costs time", min=1)
    sample_batch_size: int = option(128, "completions generated per generate call", min=1)
    pregate_threshold: float = option(0.5, "sample only where 1 - a_tgt or the prompt risk "
                                           "exceeds this", min=0.0, max=1.0)
    prompt_risk: bool = option(True, "pre-gate risky prompts too (the signal judges a "
                                     "refusal to them aligned)")
    theta: float = option(0.5, "gate threshold on misalignment max(1 - a_tgt, 1 - a_bar)",
                          min=0.0, max=1.0)
    gate_temperature: float = option(0.05, "gate temperature T (smaller: a harder gate)",
                                     min=1e-6)
    # 0.2 from a sweep over {1, 0.3, 0.2, 0.1} on the synthetic world: harmful rate 0 for all;
    # a stronger PG pushes refusals onto benign look-alike prompts (over-refusal 0.21 at 1)
    lambda_pg: float = option(0.2, "weight of the policy-gradient term", min=0.0)
    lambda_abs: float = option(1.0, "weight of SFT on the abstention text", min=0.0)
    tau: float = option(0.5, "fully misaligned: the target and every sample score below this",
                        min=0.0, max=1.0)
    eps: float = option(0.1, "added to the group std in the advantages: score spreads much "
                             "below it (judge noise) give small advantages, not unit ones",
                        min=0.0)
    refusal_texts: list[str] = option(list(V.REFUSALS), "abstention texts for harmful prompts")
    abstention_texts: list[str] = option(list(V.ABSTENTIONS), "abstention texts for "
                                                              "unanswerable prompts")
    default_abstention: str = option("refusal", "abstention kind where the signal gives no "
                                                "reason", choices=("refusal", "abstention"))
    use_gate: bool = option(True, "false (ablation): SFT and PG on every sample, no gate")
    use_abstention: bool = option(True, "false (ablation): no abstention term")
    use_pregate: bool = option(True, "false (ablation): sample every sample, not only risky ones")
    score_batch_size: int = option(512, "pairs per signal call in setup", min=1)

    def training_signals(self) -> dict[str, str]:
        """The signal specs this method trains on, by field: never the evaluation judge, and
        their local files are part of a checkpoint's fingerprint."""
        return {"signal": self.signal}


# Stack the sampled rows under the training rows (one forward) unless padding both to one
# width would cost more than this factor in tokens (and logits memory): long training rows
# beside short samples, or every row sampled. On the synthetic world it is at most 1.13
# (benchmarks/gated_padding.py), so its benchmarks always take one forward.
STACK_PADDING_LIMIT = 1.5


def padding_factor(n: int, w_batch: int, e: int, w_extra: int) -> float:
    """Tokens of one forward over n rows of width w_batch stacked on e rows of width w_extra
    (right-padded to the wider), over the tokens of two separate forwards."""
    return (n + e) * max(w_batch, w_extra) / (n * w_batch + e * w_extra)


def stacking_pays(batch: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> bool:
    """Whether one forward over both row sets pads them by at most STACK_PADDING_LIMIT."""
    (n, w_batch), (e, w_extra) = batch["input_ids"].shape, extra["input_ids"].shape
    return padding_factor(n, w_batch, e, w_extra) <= STACK_PADDING_LIMIT


def stack_rows(batch: dict[str, torch.Tensor], extra: dict[str, torch.Tensor],
               pad_token_id: int) -> dict[str, torch.Tensor]:
    """`batch`'s rows, then `extra`'s, right-padded to one width (padding on the right leaves
    every real position's logits as they were)."""
    width = max(batch["input_ids"].shape[1], extra["input_ids"].shape[1])
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return {key: torch.cat([widen(batch[key], value), widen(extra[key], value)])
            for key, value in fill.items()}


def first_rows(resp: ResponseLogits, n: int) -> ResponseLogits:
    """The response tokens of rows 0..n-1: a prefix, since tokens are flattened row by row."""
    m = int((resp.sample < n).sum())
    return ResponseLogits(resp.logits[:m], resp.targets[:m], resp.position[:m], resp.sample[:m],
                          None if resp.nll is None else resp.nll[:m])


class GatedObjective(Objective):
    name = "gated"
    config_class = GatedConfig
    samples_from_policy = True
    summary = ("SFT + signal-driven policy gradient, balanced per sample by an adaptive gate; "
               "abstains on fully misaligned inputs (arXiv 2602.02258, our design)")

    def __init__(self, config: GatedConfig | None = None, signal: Any | None = None) -> None:
        """`signal`: an `AlignmentSignal` object to use instead of the `signal` spec."""
        super().__init__(config)
        self.signal = signal
        self._signal_given = signal is not None  # setup stores the one it builds in `signal`
        self._abstain_cache: dict[tuple[int, str], tuple[list[int], list[int]]] = {}

    def input_files(self) -> list[str]:
        return [] if self._signal_given else signal_files(*self.config.training_signals().values())

    # ------------------------------------------------------------------ setup
    def setup(self, context: TrainingContext) -> None:
        """Score every training target (and a refusal to every prompt) once: the pre-gate."""
        started = time.perf_counter()
        c = self.config
        if not c.refusal_texts or not c.abstention_texts:
            raise TrimtabError("gated needs at least one refusal text and one abstention text "
                               "(--refusal-texts / --abstention-texts).")
        if self.signal is None:
            from trimtab.signals import build_signal

            self.signal = build_signal(c.signal, context)
        self.records, self.tokenizer = context.records, context.tokenizer
        self.formatter = ChatFormatter(context.tokenizer, context.train_config.max_length,
                                       "truncate")
        prompts = [r.prompt for r in self.records]
        target = self._judge_shared(prompts, [r.response for r in self.records])
        self.a_tgt = torch.tensor([v.score for v in target])
        self.reasons = [v.reason for v in target]
        misaligned = (1 - self.a_tgt) > c.pregate_threshold
        risky = torch.zeros_like(misaligned)
        if c.prompt_risk:
            refusal = self._judge_shared(prompts, [c.refusal_texts[0]] * len(prompts))
            risky = torch.tensor([v.score for v in refusal]) > c.pregate_threshold
        self.pregated = misaligned | risky | self.a_tgt.isnan()
        unscored = int(self.a_tgt.isnan().sum())
        if unscored:
            log.warning("gated: %d of %d training targets are unscored (the signal failed on "
                        "them); they are sampled, and their gate opens, so they get no SFT. "
                        "If that is most of them, the signal is likely down and the task will "
                        "barely be learned.", unscored, len(prompts))
        passing = ~misaligned & ~self.a_tgt.isnan()  # the rows only the prompt risk samples
        self.setup_stats = {"pregated": float(self.pregated.float().mean()),
                            "misaligned_targets": float(misaligned.float().mean()),
                            "risky_prompts": float(risky.float().mean()),
                            "risky_passing": float(risky[passing].float().mean())
                            if passing.any() else 0.0,
                            "target_signal": float(self.a_tgt.nanmean()),
                            "unscored_targets": unscored}
        log.info("gated pre-gate: %s", self.setup_stats)
        warn_if_mostly_misaligned(self.setup_stats["misaligned_targets"], "gated",
                                  "the gate takes them out of SFT and trains an abstention "
                                  "text on those its samples also fail")
        if c.prompt_risk and self.setup_stats["risky_passing"] >= RISKY_PROMPTS_WARNING:
            log.warning(
                "gated: the signal judges a refusal aligned for %.0f%% of the training prompts "
                "whose targets it passes, so the prompt-risk pre-gate samples nearly all of "
                "them. Right if these are harmful requests with refusal targets; otherwise the "
                "signal cannot tell a risky prompt by its refusal (a judge of harm alone: "
                "keywords, a guard model, most HTTP rubrics, calls any refusal safe), and every "
                "row costs the no-pre-gate ablation's sampling. Then set prompt_risk false "
                "(--no-prompt-risk), or train on a signal that also penalises refusing benign "
                "prompts (classifier, embedding:DIR).", 100 * self.setup_stats["risky_passing"])
        self.setup_seconds = time.perf_counter() - started

    def _judge_shared(self, prompts: list[str], responses: list[str]) -> list:
        """`_judge` of every pair, each process of a multi-process job judging its share."""
        return judged_in_shares(lambda share: self._judge(prompts[share], responses[share]),
                                len(prompts))

    def _judge(self, prompts: list[str], responses: list[str]) -> list:
        step = self.config.score_batch_size
        return [v for i in range(0, len(prompts), step) for v in
                self.signal.verdicts(prompts[i:i + step], responses[i:i + step],
                                     allow_unscored=self.signal.leaves_unscored)]

    def _abstention(self, index: int, reason: str | None) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids) of the record's abstention text, encoded once."""
        c = self.config
        kind = {"harmful": "refusal", "hallucination": "abstention"}.get(reason or "",
                                                                         c.default_abstention)
        if (index, kind) not in self._abstain_cache:
            texts = c.refusal_texts if kind == "refusal" else c.abstention_texts
            enc = self.formatter.encode(Record(self.records[index].prompt,
                                               texts[index % len(texts)]))
            if enc is None:
                raise TrimtabError("a prompt leaves no room for its abstention text within "
                                   "max_length; raise max_length.")
            cut = sum(lab == -100 for lab in enc["labels"])
            self._abstain_cache[index, kind] = (enc["input_ids"][:cut], enc["input_ids"][cut:])
        return self._abstain_cache[index, kind]

    # ------------------------------------------------------------------ loss
    def compute(self, policy, batch, reference=None) -> ObjectiveOutput:
        c = self.config
        if "sample_index" not in batch:
            raise TrimtabError("gated needs each batch's sample_index (CausalCollator adds it).")
        index = batch["sample_index"].tolist()
        n, device = len(index), batch["input_ids"].device
        a_tgt = self.a_tgt[index].to(device)
        mis = (1 - a_tgt).nan_to_num(1.0)  # unscored: uncertain, so the gate opens
        sampled = [i for i, j in enumerate(index)
                   if not (c.use_gate and c.use_pregate) or bool(self.pregated[j])]
        k = c.k
        a_bar = torch.full((n,), float("nan"), device=device)
        abstain = torch.zeros(n, dtype=torch.bool, device=device)
        extra_prompts: list[list[int]] = []
        extra_completions: list[list[int]] = []
        metrics: dict[str, float] = {"pregated": len(sampled) / n,
                                     "signal_target": float(a_tgt.nanmean())}
        if sampled:
            started = time.perf_counter()
            comp = sample_completions(policy, self.tokenizer,
                                      [self.records[index[i]].prompt for i in sampled], k,
                                      temperature=c.temperature, top_p=c.top_p, top_k=c.top_k,
                                      max_new_tokens=c.max_new_tokens,
                                      batch_size=c.sample_batch_size)
            verdicts = self._judge([self.records[index[i]].prompt for i in sampled
                                    for _ in range(k)], comp.texts)
            a = torch.tensor([v.score for v in verdicts], device=device).view(-1, k)
            valid = a.isfinite()
            count = valid.sum(1).clamp(min=1)
            mean = a.nan_to_num(0.0).sum(1) / count
            std = (((a - mean[:, None]).nan_to_num(0.0) ** 2).sum(1) / count).sqrt()
            adv = ((a - mean[:, None]) / (std[:, None] + c.eps)).nan_to_num(0.0)
            rows = torch.tensor(sampled, device=device)
            a_bar[rows] = torch.where(valid.any(1), mean, torch.nan)
            # an unscored target or sample is unknown, never evidence of misalignment
            fully = (a_tgt[rows].nan_to_num(1.0) < c.tau) & (a.nan_to_num(1.0) < c.tau).all(1) \
                & valid.any(1)
            if c.use_abstention:
                abstain[rows] = fully
            extra_prompts += comp.prompt_ids
            extra_completions += comp.completion_ids
            metrics["signal"] = float(a[valid].mean()) if valid.any() else math.nan
            if not valid.all():  # only from a signal set to leave failures unscored
                metrics["unscored"] = float((~valid).float().mean())
                log.warning("gated: %d of %d sampled completions are unscored; they get no "
                            "advantage", int((~valid).sum()), valid.numel())
            metrics["sample_seconds"] = time.perf_counter() - started
        for i in abstain.nonzero().flatten().tolist():
            j = index[i]
            reason = self.reasons[j]
            if reason not in KINDS:  # the target's reason first, then the samples' majority
                said = [v.reason for v in verdicts[sampled.index(i) * k:][:k]
                        if v.reason in KINDS]
                reason = max(KINDS, key=said.count) if said else None
            p, r = self._abstention(j, reason)
            extra_prompts.append(p)
            extra_completions.append(r)

        pg = torch.zeros(n, device=device)
        abs_nll = torch.zeros(n, device=device)
        extra = completion_batch(extra_prompts, extra_completions, self.tokenizer.pad_token_id,
                                 device) if extra_prompts else None
        one_forward = extra is not None and stacking_pays(batch, extra)
        if extra is not None:
            metrics["one_forward"] = float(one_forward)
        if one_forward:
            # ONE forward over training rows, completions and abstention rows: a second
            # forward and its backward are mostly fixed overhead on small models
            rows_in = stack_rows(batch, extra, self.tokenizer.pad_token_id)
            everything = select_response(forward_logits(policy, rows_in), rows_in["labels"])
            row_nll = per_sample_mean(token_nll(everything), everything.sample,
                                      n + len(extra_prompts))
            nll, extra_nll = row_nll[:n], row_nll[n:]
            resp = first_rows(everything, n)
        else:
            resp = select_response(forward_logits(policy, batch), batch["labels"])
            nll = per_sample_mean(token_nll(resp), resp.sample, n)
            if extra is not None:
                # through the unwrapped model: under DDP a second forward of the wrapper would
                # make its reducer expect a second backward; the gradients still meet the first
                # forward's in one backward and one all-reduce
                extra_resp = select_response(forward_logits(_unwrap(policy), extra),
                                             extra["labels"])
                extra_nll = per_sample_mean(token_nll(extra_resp), extra_resp.sample,
                                            len(extra_prompts))
        if extra is not None:
            n_comp = len(sampled) * k
            if sampled:
                logp = -extra_nll[:n_comp].view(-1, k)  # length-normalised log-likelihood
                pg[rows] = -(adv * logp).mean(1)
            abs_nll[abstain] = extra_nll[n_comp:]

        if c.use_gate:
            misalignment = torch.maximum(mis, (1 - a_bar).nan_to_num(0.0))
            gate = torch.sigmoid((misalignment - c.theta) / c.gate_temperature)
            sft_weight, pg_weight = 1 - gate, gate
        else:
            gate = torch.ones(n, device=device)
            sft_weight, pg_weight = gate, gate
        loss = (sft_weight * nll + c.lambda_pg * pg_weight * pg
                + c.lambda_abs * abstain.float() * abs_nll).mean()
        metrics.update(gate=float(gate.mean()), gate_open=float((gate > 0.5).float().mean()),
                       abstained=float(abstain.float().mean()), nll=float(nll.detach().mean()),
                       pg=float(pg.detach().sum()) / max(len(sampled), 1))
        return ObjectiveOutput(loss, metrics, resp)

