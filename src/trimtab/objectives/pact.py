"""`pact`: SFT plus a KL that holds the policy to the reference on a small set of safety tokens.

(arXiv 2603.07445, *PACT: Preserving safety Alignment via Constrained Tokens*; implemented from
the formulas in DESIGN.md.) S is a set of k safety tokens with weights v >= 0 (see
`trimtab.safety_tokens`: the tokens an aligned model uses to start a refusal, weighted by how
much more the aligned model likes them than its unaligned base). At every response position t:

    q_t = softmax(ref_logits[S] / T) * v, renormalised
    L_t = T^2 * KL(q_t || softmax(policy_logits[S] / T))
    loss = CE + lambda * mean_t(w_t * L_t),   w_t = first_weight on the first positions, else 1

The task tokens are free to change; only the relative preferences among the safety tokens are
pinned, and tokens with weight 0 (a gap below the set's mean after z-scoring) are pushed down
within S. A softmax over S alone cannot see probability mass leaving S for a token outside it
(a harmful compliance's first word): `mass_weight` (NOT in DESIGN.md, off by default) adds
mean_t w_t * KL(Bernoulli(m_ref) || Bernoulli(m_policy)), m the full-softmax probability of the
weighted safety tokens, with the policy's log-normaliser recovered from its CE. On the synthetic
world the mass term is what stops compliance and the KL inside S is what costs task accuracy,
so the mass term pairs with a small lambda (0.1); see benchmarks/results/pact/README.md. On a
harmful row the CE and the term balance at m = w * m_ref / (1 + w): at weight 1, chosen on world
seed 0, too close to greedy decoding's tipping point (harm 0.114 on world seed 1); at weight 4
the term's pull at the later positions of those rows costs world seed 0's task.
`mass_positions=1` keeps it on the first response position, where a refusal is decided: at
weight 4 that met the targets on world seeds 0 and 1, where it was chosen, and cost the task on
world seed 2 (0.831 against sft's 0.936), whose reference gives some reviews refusal mass.
`mass_critic` weights the term per row by a judge's risk of (prompt, target), so it holds the
refusal mass on harmful rows only: that took world seed 2's task back to within 0.001 of the
target, and on world seed 3, held out, kept the task and let harm through (0.083). No setting
has carried over to a world it was not chosen on (README, "On a world no setting was chosen
on").

The term adds no (positions x vocabulary) tensor, forward or backward. The policy's k logits are
columns of the logits the CE needs anyway, picked with a sparse gradient (`columns`) that
autograd adds into the CE's gradient, where indexing would build a second (n, V) tensor of
zeros. The reference's come from its last hidden states times the k output-embedding rows
(with the mass term, its log-normaliser too, a few rows of full logits at a time; the cache
below computes it in setup from the full logits, batch by batch, outside the training loss).
And since the reference is frozen, those k numbers per training token are by default computed
once in `setup` (`cache_reference`): training then runs no reference forward at all (exact,
not approximate).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from trimtab.config import CheckedConfig, option
from trimtab.errors import TrimtabError
from trimtab.objectives.base import (
    Objective,
    ObjectiveOutput,
    ResponseLogits,
    TrainingContext,
    forward_logits,
    response_mask,
    select_response,
    token_nll,
)
from trimtab.safety_tokens import SELECTION, SafetyTokenConfig, SafetyTokens, restricted_logits
from trimtab.signals import signal_files
from trimtab.signals.base import warn_if_mostly_misaligned

log = logging.getLogger(__name__)


@dataclass
class PACTConfig(CheckedConfig):
    token_file: str | None = option(None, "safety-token file from `trimtab safety-tokens`; none "
                                          "= built in setup from the reference, the base and the "
                                          "synthetic world's training refusals (cached)")
    k: int = option(SELECTION.k, "safety tokens when the set is built in setup; 0 = auto: 50 "
                                 "per 50k vocabulary entries, at least 16", min=0)
    n_positions: int = option(SELECTION.n_positions, "first response positions averaged to "
                                                     "select the tokens (built in setup)", min=1)
    temperature: float = option(2.0, "softmax temperature T on both sides of the KL",
                                min=1e-3)
    lam: float = option(1.0, "lambda: weight of the safety-token KL added to the CE", min=0.0)
    first_weight: float = option(1.0, "extra weight of the KL at the first response positions "
                                      "(1 = none)", min=0.0)
    first_positions: int = option(8, "how many first response positions get first_weight",
                                  min=0)
    mass_weight: float = option(0.0, "NOT in DESIGN.md, off by default: weight of a binary KL "
                                     "on the total probability of the weighted safety tokens, "
                                     "which the softmax over S alone cannot see. With lam 0.1, "
                                     "1 (every position) or 4 with --mass-positions 1 met the "
                                     "harm and task targets on the synthetic worlds they were "
                                     "chosen on, with some over-refusal, but not on a world "
                                     "held out (README, 'On a world no setting was chosen on')",
                                min=0.0)
    mass_positions: int = option(0, "with the mass term: apply it only at the first this many "
                                    "response positions, where greedy decoding decides "
                                    "between a refusal and a compliance (0 = every position)",
                                 min=0)
    mass_critic: str | None = option(None, "with the mass term: an alignment signal spec "
                                           "(classifier, hf:PATH, guard:PATH, http:URL, ...; "
                                           "never the evaluation judge) that judges each "
                                           "training pair (prompt, target) once in setup; "
                                           "the term on a row is weighted by its risk, 1 - "
                                           "score, so it holds the refusal mass on rows whose "
                                           "target complies with harm and leaves task rows "
                                           "free (none = every row at weight 1)")
    cache_reference: bool = option(True, "compute the frozen reference's k safety-token logits "
                                         "for the training set once in setup (exact; no "
                                         "reference forward per step)")
    cache_max_mb: float = option(1024.0, "largest reference cache (k floats per response "
                                         "token); a bigger one falls back to a reference "
                                         "forward per step", min=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mass_positions and not self.mass_weight:
            raise TrimtabError(f"--mass-positions {self.mass_positions} places pact's mass "
                               "term, but mass_weight is 0, so there is none; set "
                               "--mass-weight above 0 or drop --mass-positions (mass_weight, "
                               "mass_positions in a YAML file).")
        if self.mass_critic is not None and not self.mass_weight:
            raise TrimtabError(f"--mass-critic {self.mass_critic} weights pact's mass term per "
                               "row, but mass_weight is 0, so there is none; set "
                               "--mass-weight above 0 or drop --mass-critic (mass_weight, "
                               "mass_critic in a YAML file).")

    def training_signals(self) -> dict[str, str]:
        """The signal specs this method trains on, by field (see GatedConfig's)."""
        return {} if self.mass_critic is None else {"mass_critic": self.mass_critic}


class _Columns(torch.autograd.Function):
    """`logits.gather(1, index)` with a sparse gradient: (n, V) in shape, n * k numbers in
    memory. Autograd adds it in place into the CE's dense (n, V) gradient, where indexing
    would first build a second (n, V) tensor of zeros with the k columns filled in. Coalescing
    sums a column picked twice in a row (a target that is also a safety token) before that
    add, as pact's former dense pick did, so pact's gradients are unchanged bit for bit. (With
    a third gradient on the same logits, `kl+pact` with the mass term, the order of the sums
    changes, and with it the last bit.)"""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.logits_shape = logits.shape
        return logits.gather(1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        rows = torch.arange(index.shape[0], device=index.device)
        coords = torch.stack([rows.repeat_interleave(index.shape[1]), index.reshape(-1)])
        sparse = torch.sparse_coo_tensor(coords, grad.reshape(-1), ctx.logits_shape,
                                         check_invariants=False)
        return sparse.coalesce(), None


def columns(logits: torch.Tensor, index: torch.Tensor, sparse_grad: bool) -> torch.Tensor:
    """`logits.gather(1, index)` (n, k); with `sparse_grad`, without an (n, V) tensor in the
    backward.

    The sparse gradient must meet a dense one on the same tensor (the CE's, which the caller
    vouches for with `sparse_grad`), since the nodes upstream take dense gradients only. A
    view of the first rows of a larger tensor (`pact+gated`'s training rows within its one
    stacked forward, whose CE runs on the larger tensor) is therefore gathered from that
    tensor; any other view gets the ordinary dense gradient.
    """
    base = logits._base
    if (base is not None and base.dim() == 2 and logits.stride() == base.stride()
            and logits.storage_offset() == base.storage_offset()
            and logits.shape[1] == base.shape[1]):
        logits, base = base, None  # gather allows fewer index rows than the input has
    if not sparse_grad or base is not None or not logits.requires_grad:
        return logits.gather(1, index)
    return _Columns.apply(logits, index)


def binary_kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(a) || Bernoulli(b)) from log a and log b, elementwise."""
    log_a, log_b = log_a.clamp(max=-1e-7), log_b.clamp(max=-1e-7)
    log_1a, log_1b = torch.log(-torch.expm1(log_a)), torch.log(-torch.expm1(log_b))
    return log_a.exp() * (log_a - log_b) + log_1a.exp() * (log_1a - log_1b)


def safety_token_kl(policy_s: torch.Tensor, ref_s: torch.Tensor, weights: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """T^2 * KL(q || softmax(policy_s / T)) per row; q = softmax(ref_s / T) * v, renormalised.

    Inputs are (n, k); tokens with v = 0 have q = 0 and add nothing but their policy mass.
    """
    q = torch.softmax(ref_s.float() / temperature, dim=-1) * weights
    q = q / q.sum(dim=-1, keepdim=True)
    log_p = torch.log_softmax(policy_s.float() / temperature, dim=-1)
    kl = (torch.special.xlogy(q, q) - q * log_p).sum(dim=-1)
    return temperature ** 2 * kl


class PACTObjective(Objective):
    name = "pact"
    config_class = PACTConfig
    needs_reference = True
    summary = "SFT + KL to the reference on a small weighted set of safety tokens (PACT)"

    def __init__(self, config: PACTConfig | None = None) -> None:
        super().__init__(config)
        self.tokens: SafetyTokens | None = None
        self.token_path: str | None = None
        self._ids: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._cache: list[torch.Tensor | None] | None = None
        # with `mass_critic`: the risk of every training record, judged once in setup
        self.mass_risks: torch.Tensor | None = None

    def input_files(self) -> list[str]:
        files = [] if self.config.token_file is None else [self.config.token_file]
        return files + signal_files(*self.config.training_signals().values())

    def setup(self, context: TrainingContext) -> None:
        """Load the token file (checked against this tokenizer) or build the world's set."""
        from trimtab.safety_tokens import cached_world_tokens

        cfg = self.config
        if cfg.token_file is not None:
            tokens = SafetyTokens.load(cfg.token_file)
            self.token_path = str(cfg.token_file)
            ignored = [f"--{name.replace('_', '-')} {getattr(cfg, name)}"
                       for name in ("k", "n_positions")
                       if getattr(cfg, name) not in (getattr(SELECTION, name),
                                                     getattr(tokens, name))]
            if ignored:
                raise TrimtabError(
                    f"{', '.join(ignored)} would select a set built in setup, but --token-file "
                    f"{cfg.token_file} is a set already selected (k={tokens.k}, "
                    f"n_positions={tokens.n_positions}). Drop them, or rebuild the file with "
                    "`trimtab safety-tokens` and those values.")
        elif context.world is not None and context.artifacts_dir is not None:
            selection = SafetyTokenConfig(k=cfg.k, n_positions=cfg.n_positions)
            tokens, path = cached_world_tokens(context.reference_path, context.base_path,
                                               context.world, context.artifacts_dir, selection)
            self.token_path = str(path)
        else:
            raise TrimtabError(
                "pact needs a safety-token file outside the synthetic world: build one with "
                "`trimtab safety-tokens --aligned MODEL [--base BASE] --data PAIRS.jsonl --out "
                "tokens.json` and pass --token-file tokens.json."
            )
        tokens.check_tokenizer(context.tokenizer, f"safety-token file {self.token_path}")
        self.set_tokens(tokens)
        log.info("pact: safety tokens from %s\n%s", self.token_path, tokens.describe())
        self._cache = None
        self.mass_risks = None if cfg.mass_critic is None else self.judge_rows(context)
        self.needs_reference = True
        if cfg.cache_reference:
            self._cache_reference(context)

    def _cache_reference(self, context: TrainingContext) -> None:
        """Precompute the reference's safety-token logits for every training record (exact:
        the reference is frozen), so training needs no reference model at all."""
        import warnings

        from trimtab.data.formatting import ChatFormatter
        from trimtab.safety_tokens import reference_token_logits
        from trimtab.training.run import compute_device, load_model

        train = context.train_config
        features = ChatFormatter(context.tokenizer, train.max_length,
                                 train.on_overflow).encode_all(context.records)
        n_tokens = sum(sum(1 for t in f["labels"] if t != -100) for f in features)
        mb = n_tokens * len(self.tokens.token_ids) * 4 / 2**20
        if mb > self.config.cache_max_mb:
            warnings.warn(f"pact: the reference cache would take {mb:.0f} MB (over cache_max_mb="
                          f"{self.config.cache_max_mb:g}); using a reference forward per step.",
                          stacklevel=2)
            return
        # each process of a multi-GPU launch builds the (small) cache on its own GPU
        model = load_model(context.reference_path, train, frozen=True).to(compute_device())
        self._cache = reference_token_logits(model, features, len(context.records),
                                             context.tokenizer.pad_token_id, self._ids,
                                             2 * train.per_device_train_batch_size,
                                             with_lse=self.config.mass_weight > 0)
        del model
        self.needs_reference = False  # every reference number the loss needs is cached

    def judge_rows(self, context: TrainingContext) -> torch.Tensor:
        """1 - the mass critic's score of every training pair (prompt, target), judged once in
        setup: the pairs never change during training. A critic that keeps failing stops the
        run."""
        from trimtab.objectives.risk_kl import RiskKLConfig, critic_risks, critic_spec
        from trimtab.signals import build_signal

        spec = self.config.mass_critic
        signal = build_signal(critic_spec(spec), context)
        records = context.records
        scoring = RiskKLConfig()  # risk-kl's batch size and retries, for the same judges
        risks = critic_risks(signal, [r.prompt for r in records], [r.response for r in records],
                             scoring.score_batch_size, scoring.retries, scoring.retry_wait,
                             repr(spec), fix="choose another (--mass-critic)")
        share = float((risks > 0.5).float().mean())
        warn_if_mostly_misaligned(share, "pact", "the mass term then holds the reference's "
                                  "refusal mass on them, task rows included")
        log.info("pact: the mass critic %s judges %.1f%% of %d training targets risky "
                 "(risk > 0.5)", spec, 100 * share, len(records))
        return risks

    def set_tokens(self, tokens: SafetyTokens) -> None:
        tokens.check_values()
        self.tokens = tokens
        self._ids = torch.tensor(tokens.token_ids, dtype=torch.long)
        self._weights = torch.tensor(tokens.weights, dtype=torch.float32)

    def compute(self, policy, batch, reference) -> ObjectiveOutput:
        resp = select_response(forward_logits(policy, batch), batch["labels"])
        ce = token_nll(resp).mean()
        term, metrics = self.penalty(resp, batch, reference)
        return ObjectiveOutput(ce + term, {"nll": ce.item(), **metrics}, resp)

    def penalty(self, resp: ResponseLogits, batch, reference
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """lambda * the weighted safety-token KL (plus the optional mass term) on `resp`.

        Where the caller's loss holds the CE of `resp` (`resp.nll`, as in every objective
        here), the safety tokens are picked with a sparse gradient and the mass term reuses
        the CE for the policy's log-normaliser.
        """
        if self._ids is None:
            raise TrimtabError("pact has no safety tokens: call setup() (finetune does) or "
                               "set_tokens() before training.")
        cfg = self.config
        device = resp.logits.device
        ids, weights = self._ids.to(device), self._weights.to(device)
        # (n, k) columns of the logits the CE already needs (with the mass term, also each
        # row's target logit), picked in one gather whose gradient is sparse
        index = ids.expand(len(resp.logits), -1)
        if cfg.mass_weight > 0:
            index = torch.cat([index, resp.targets[:, None]], 1)
        # a CE on these logits is in the loss (the caller's, or the mass term's own below)
        sparse_grad = resp.nll is not None or cfg.mass_weight > 0
        picked = columns(resp.logits, index, sparse_grad)
        policy_s = picked[:, :len(ids)]
        ref_s = self._reference_logits(batch, reference, ids)
        first = resp.position < cfg.first_positions
        w = torch.where(first, cfg.first_weight, 1.0)
        mass = None
        if cfg.mass_critic is not None and self.mass_risks is None:
            raise TrimtabError("pact's mass critic has not judged the training rows: call "
                               "setup() (finetune does) before training.")
        if cfg.mass_weight > 0:  # the optional extension: total safety mass, full softmax
            ref_s, ref_lse = ref_s[:, :-1], ref_s[:, -1]
            nll = token_nll(resp)
            # log-sum-exp of the policy's logits, recovered from the CE: nll = lse - logit[y]
            lse = nll + picked[:, -1].float()
            on = weights > 0
            log_m = torch.logsumexp(policy_s[:, on].float() - lse[:, None], -1)
            log_m_ref = torch.logsumexp(ref_s[:, on].float() - ref_lse[:, None].float(), -1)
            mass = binary_kl(log_m_ref, log_m)
            placed = (resp.position < cfg.mass_positions if cfg.mass_positions > 0
                      else torch.ones_like(mass, dtype=torch.bool))
            mass = torch.where(placed, mass, 0.0)  # still averaged over every position
            # with a critic, each token's weight times its row's risk
            risk = (None if self.mass_risks is None
                    else self._row_risks(batch, device)[resp.sample])
            w_mass = w if risk is None else w * risk
        kl = safety_token_kl(policy_s, ref_s, weights, cfg.temperature)
        term = (w * kl).sum() / kl.numel()
        total = cfg.lam * term
        if mass is not None:
            total = total + cfg.mass_weight * (w_mass * mass).sum() / mass.numel()
        # how often the policy's favourite safety token is still the reference's
        top_agree = (policy_s.detach().argmax(-1) == ref_s.argmax(-1)).float().mean()
        metrics = {"safety_kl": (kl.mean() / cfg.temperature ** 2).item(),
                   "safety_term": term.item(), "top_agree": top_agree.item()}
        if mass is not None:  # where the term applies, so it reads the same at any length
            metrics["mass_kl"] = mass[placed].mean().item()
            if risk is not None:  # where the term applies: per row at mass_positions 1
                metrics["mass_risk"] = risk[placed].mean().item()
        if first.any():
            metrics["safety_kl_first"] = (kl[first].mean() / cfg.temperature ** 2).item()
        return total, metrics

    def _row_risks(self, batch, device: torch.device) -> torch.Tensor:
        """The mass critic's risk of each row of the batch, (B,)."""
        index = batch.get("sample_index")
        if index is None:
            raise TrimtabError("pact's mass critic needs each batch's `sample_index` to look up "
                               "the risk of its records; use trimtab's CausalCollator "
                               "(finetune does).")
        index = index.cpu()
        if len(index) and int(index.max()) >= len(self.mass_risks):
            raise TrimtabError(f"pact's mass critic judged {len(self.mass_risks)} training "
                               f"records, but a batch holds record {int(index.max())} (the "
                               "data changed after setup); run setup again.")
        return self.mass_risks[index].to(device)

    def _reference_logits(self, batch, reference, ids: torch.Tensor) -> torch.Tensor:
        """(n, k) reference logits on S at the batch's response positions: from the cache
        built in setup, else from a reference forward that computes only the k logits."""
        if self._cache is not None and "sample_index" in batch:
            parts = [self._cache[i] for i in batch["sample_index"].tolist()]
            counts = response_mask(batch["labels"]).sum(dim=1).tolist()
            if all(p is not None and len(p) == c for p, c in zip(parts, counts, strict=True)):
                return torch.cat(parts).to(ids.device)
            raise TrimtabError("pact's reference cache does not match this batch (the data "
                               "changed after setup); run setup again or set "
                               "--no-cache-reference.")
        if reference is None:
            raise TrimtabError("pact has no reference cache for this batch and no reference "
                               "model; train through finetune (which runs setup) or set "
                               "--no-cache-reference.")
        model, ctx = reference.model_context()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), ctx:  # the mass term also needs the full log-sum-exp
                return restricted_logits(model, batch, ids, response_mask(batch["labels"]),
                                         with_lse=self.config.mass_weight > 0)
        finally:
            model.train(was_training)
