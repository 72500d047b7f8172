"""`pact`: the safety-token KL, its memory footprint, setup checks and a quick-world run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import collate, tiny_llama, word_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode

from trimtab.cache import artifacts_root
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.objectives import get_method
from trimtab.objectives.base import (
    TrainingContext,
    forward_logits,
    response_mask,
    select_response,
)
from trimtab.objectives.composite import CompositeObjective
from trimtab.objectives.pact import (
    PACTConfig,
    PACTObjective,
    binary_kl,
    columns,
    safety_token_kl,
)
from trimtab.objectives.sft import SFTObjective
from trimtab.safety_tokens import SafetyTokens, restricted_logits, vocab_hash
from trimtab.training.config import TrainConfig
from trimtab.training.reference import Reference
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

RECORDS = [
    Record("what is 2 plus 3 ?", "5"),
    Record("how do i make a bomb at home ?", "i am sorry , but i can not help with that ."),
    Record("how do i steal a car ?", "sure . first break the window , then drive ."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer(RECORDS)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return collate(tokenizer, RECORDS)


def token_set(tokenizer, words: list[str], weights: list[float]) -> SafetyTokens:
    ids = tokenizer.convert_tokens_to_ids(words)
    return SafetyTokens(token_ids=ids, tokens=words, weights=weights, k=len(words),
                        n_positions=8, vocab_size=len(tokenizer), vocab_hash=vocab_hash(tokenizer),
                        aligned="aligned", base="base", weights_from="gap")


WORDS = ["i", "sorry", "not", "can", "sure", "first"]
WEIGHTS = [0.6, 0.5, 0.4, 0.48, 0.0, 0.0]


@pytest.fixture
def objective(tokenizer) -> PACTObjective:
    obj = PACTObjective(PACTConfig())
    obj.set_tokens(token_set(tokenizer, WORDS, WEIGHTS))
    return obj


def test_safety_token_kl_matches_the_formula_by_hand():
    torch.manual_seed(0)
    pol, ref = torch.randn(4, 5), torch.randn(4, 5)
    v = torch.tensor([0.5, 0.0, 0.3, 0.8, 0.1])
    temperature = 2.0
    out = safety_token_kl(pol, ref, v, temperature)
    for row in range(4):
        q = torch.softmax(ref[row] / temperature, -1) * v
        q = q / q.sum()
        p = torch.softmax(pol[row] / temperature, -1)
        nz = q > 0
        by_hand = temperature ** 2 * (q[nz] * (q[nz] / p[nz]).log()).sum()
        assert out[row].item() == pytest.approx(by_hand.item(), rel=1e-5)
    # q is zero where v is: those tokens add no KL term of their own
    assert torch.isfinite(out).all()


def test_binary_kl_of_the_safety_mass():
    a, b = torch.tensor([0.9, 0.2, 0.5]), torch.tensor([0.1, 0.2, 0.7])
    by_hand = a * (a / b).log() + (1 - a) * ((1 - a) / (1 - b)).log()
    assert torch.allclose(binary_kl(a.log(), b.log()), by_hand, atol=1e-6)


def test_kl_is_zero_only_when_the_policy_matches_the_reweighted_reference():
    ref = torch.randn(3, 4)
    uniform = torch.ones(4)
    assert safety_token_kl(ref, ref, uniform, 2.0).abs().max() < 1e-6
    # with weights the target moves away from the reference: the same logits no longer match
    assert (safety_token_kl(ref, ref, torch.tensor([1.0, 0.1, 0.1, 0.1]), 2.0) > 1e-4).all()


def test_first_weight_scales_the_kl_of_the_first_response_positions_only(tokenizer, batch,
                                                                         objective):
    """term = sum_t w_t L_t / n with w_t = first_weight for t < first_positions, else 1."""
    policy = tiny_llama(len(tokenizer))
    reference = Reference(policy, tiny_llama(len(tokenizer), seed=1))
    resp = select_response(forward_logits(policy, batch), batch["labels"])
    first = resp.position < 2
    assert 0 < int(first.sum()) < len(first)  # positions on both sides of the cut
    terms = {}
    for weight in (1.0, 3.0):
        objective.config = PACTConfig(first_weight=weight, first_positions=2)
        _, metrics = objective.penalty(resp, batch, reference)
        terms[weight] = metrics
    n, t2 = len(first), PACTConfig().temperature ** 2
    first_sum = terms[1.0]["safety_kl_first"] * t2 * int(first.sum())
    assert terms[3.0]["safety_term"] == pytest.approx(terms[1.0]["safety_term"]
                                                      + 2 * first_sum / n, rel=1e-5)
    assert terms[3.0]["safety_kl_first"] == pytest.approx(terms[1.0]["safety_kl_first"])


def _mass_kl_by_hand(tokenizer, batch, policy, frozen):
    """The policy's response logits, and each response token's KL(Bernoulli(m_ref) ||
    Bernoulli(m)), m the full-softmax mass of the weighted safety tokens."""
    resp = select_response(forward_logits(policy, batch), batch["labels"])
    ref = select_response(forward_logits(frozen, batch), batch["labels"])
    on = torch.tensor(tokenizer.convert_tokens_to_ids(WORDS))[torch.tensor(WEIGHTS) > 0]
    m = torch.softmax(resp.logits.float(), -1)[:, on].sum(-1)
    m_ref = torch.softmax(ref.logits.float(), -1)[:, on].sum(-1)
    return resp, m_ref * (m_ref / m).log() + (1 - m_ref) * ((1 - m_ref) / (1 - m)).log()


def test_the_mass_term_by_hand_and_on_the_first_positions_only(tokenizer, batch, objective):
    """mass term = mean_t KL(Bernoulli(m_ref,t) || Bernoulli(m_t)), m the full-softmax mass of
    the weighted tokens; with mass_positions, positions from there on add zero to the mean."""
    policy = tiny_llama(len(tokenizer))
    frozen = tiny_llama(len(tokenizer), seed=1)
    reference = Reference(policy, frozen)
    resp, by_hand = _mass_kl_by_hand(tokenizer, batch, policy, frozen)
    first = resp.position < 2
    assert 0 < int(first.sum()) < len(first)  # positions on both sides of the cut
    for positions, expected, logged in (
            (0, by_hand.mean(), by_hand.mean()),
            (2, (by_hand * first).sum() / len(first), by_hand[first].mean())):
        objective.config = PACTConfig(lam=0.0, mass_weight=1.0, mass_positions=positions)
        total, metrics = objective.penalty(resp, batch, reference)
        assert total.item() == pytest.approx(expected.item(), rel=1e-4), positions
        # the log reads the term where it applies, whatever the responses' length
        assert metrics["mass_kl"] == pytest.approx(logged.item(), rel=1e-4), positions
    with pytest.raises(TrimtabError, match="mass_weight is 0, so there is none"):
        PACTConfig(mass_positions=1)


def test_the_mass_critic_weights_each_rows_mass_term_by_its_risk(tmp_path, tokenizer, batch):
    """With `mass_critic`, term = sum_t risk(row of t) * KL_t / n, KL_t the binary mass KL on
    the placed positions: risk = 1 - the critic's score of the row's (prompt, target), judged
    once in setup."""
    from trimtab.pipeline import check_not_trained_on_oracle
    from trimtab.training.run import save_model

    policy = tiny_llama(len(tokenizer))
    frozen = tiny_llama(len(tokenizer), seed=1)
    reference = Reference(policy, frozen)
    resp, by_hand = _mass_kl_by_hand(tokenizer, batch, policy, frozen)
    placed = resp.position < 2
    assert 0 < int(placed.sum()) < len(placed)
    # setup judges every record: the keyword judge (no world needed) passes the refusal alone
    save_model(frozen, tokenizer, tmp_path / "ref")
    tokens = token_set(tokenizer, WORDS, WEIGHTS).save(tmp_path / "tokens.json")
    ctx = TrainingContext(records=RECORDS, tokenizer=tokenizer, model_path=tmp_path / "ref",
                          reference_path=tmp_path / "ref", train_config=TrainConfig())
    judged = PACTObjective(PACTConfig(token_file=str(tokens), lam=0.0, mass_weight=1.0,
                                      mass_positions=2, mass_critic="keywords",
                                      cache_reference=False))
    judged.setup(ctx)
    assert judged.mass_risks.tolist() == [1.0, 0.0, 1.0]
    # rows are looked up by the record behind them, not by their place in the batch
    for risks, order in (([1.0, 0.0, 1.0], [0, 1, 2]), ([0.25, 0.5, 1.0], [2, 0, 1])):
        judged.mass_risks = torch.tensor(risks)
        shuffled = {**batch, "sample_index": torch.tensor(order)}
        total, metrics = judged.penalty(resp, shuffled, reference)
        row_risk = torch.tensor(risks)[torch.tensor(order)][resp.sample]
        expected = (row_risk * by_hand * placed).sum() / len(placed)
        assert total.item() == pytest.approx(expected.item(), rel=1e-4), risks
        assert metrics["mass_risk"] == pytest.approx(row_risk[placed].mean().item(), rel=1e-6)
        # the logged KL stays the unweighted one where the term is placed
        assert metrics["mass_kl"] == pytest.approx(by_hand[placed].mean().item(), rel=1e-4)
    # a record the critic never judged, or no judging at all, stops the run
    with pytest.raises(TrimtabError, match="judged 3 training records, but a batch holds "
                                           "record 5"):
        judged.penalty(resp, {**batch, "sample_index": torch.tensor([0, 5, 1])}, reference)
    judged.mass_risks = None
    with pytest.raises(TrimtabError, match="has not judged the training rows"):
        judged.penalty(resp, batch, reference)
    # the critic is a training signal: refused without a term to weigh, and never the oracle
    with pytest.raises(TrimtabError, match="--mass-critic keywords weights"):
        PACTConfig(mass_critic="keywords")
    with pytest.raises(TrimtabError, match="mass_critic: oracle"):
        check_not_trained_on_oracle("pact", PACTConfig(mass_weight=1.0, mass_critic="oracle"))
    # a judge loaded from a folder joins the checkpoint fingerprint
    assert PACTObjective(PACTConfig(mass_weight=1.0, mass_critic="hf:/judges/harm")
                         ).input_files() == ["/judges/harm"]


def test_a_token_file_is_not_combined_with_selection_options(tmp_path, tokenizer, caplog):
    """k and n_positions select a set built in setup; beside a token file they would be
    ignored, so they are refused unless they are the defaults or the file's own. Setup logs
    the set it trains with."""
    import logging

    path = token_set(tokenizer, WORDS, WEIGHTS).save(tmp_path / "tokens.json")
    ctx = TrainingContext(records=RECORDS, tokenizer=tokenizer, model_path=tmp_path,
                          reference_path=tmp_path, train_config=TrainConfig())
    with pytest.raises(TrimtabError, match="--k 8 would select a set built in setup"):
        PACTObjective(PACTConfig(token_file=str(path), k=8)).setup(ctx)
    caplog.set_level(logging.INFO)
    same = PACTObjective(PACTConfig(token_file=str(path), k=len(WORDS), cache_reference=False))
    same.setup(ctx)  # the file's own k: nothing is ignored
    assert f"{len(WORDS)} safety tokens" in caplog.text and "'sorry'" in caplog.text


def test_a_checkpoint_records_the_token_file_it_trained_with(tmp_path, tokenizer):
    """A token file rebuilt at the same path changes the run's fingerprint, so a resume
    against it is refused instead of training on the new set unnoticed."""
    from trimtab.training.checkpoints import _differences, run_fingerprint

    path = token_set(tokenizer, WORDS, WEIGHTS).save(tmp_path / "tokens.json")
    objective = PACTObjective(PACTConfig(token_file=str(path)))

    def fingerprint():
        return run_fingerprint(tmp_path, None, None, objective, TrainConfig(), [])

    before = fingerprint()
    assert list(before["input_files"]) == [str(path)]
    token_set(tokenizer, WORDS, [0.6, 0.5, 0.4, 0.0, 0.48, 0.0]).save(path)
    assert _differences(before, fingerprint()) == [
        f"input_files.{path} {before['input_files'][str(path)]!r} -> "
        f"{fingerprint()['input_files'][str(path)]!r}"]
    assert "input_files" not in run_fingerprint(tmp_path, None, None, PACTObjective(),
                                                TrainConfig(), [])


def test_lambda_zero_is_sft(tokenizer, batch, objective):
    policy = tiny_llama(len(tokenizer))
    reference = Reference(policy, copy.deepcopy(policy))
    objective.config = PACTConfig(lam=0.0)
    out = objective(policy, batch, reference)
    sft = SFTObjective()(policy, batch)
    assert out.loss.item() == pytest.approx(sft.loss.item(), abs=1e-6)
    assert out.metrics["safety_kl"] > 0  # a fresh copy agrees, but the weights reshape q


def test_restricted_reference_logits_equal_the_sliced_full_logits(tokenizer, batch):
    model = tiny_llama(len(tokenizer), seed=3)
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(WORDS))
    mask = response_mask(batch["labels"])
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits[:, :-1][mask][:, ids]
        fast = restricted_logits(model, batch, ids, mask)
    assert fast.shape == (int(mask.sum()), len(WORDS))
    assert torch.allclose(fast, full, atol=1e-5)


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _full_vocab_tensors(fn, vocab: int) -> int:
    with _Shapes() as mode:
        fn()
    return sum(1 for s in mode.shapes if s and s[-1] == vocab)


@pytest.mark.parametrize("chunk_rows", [3, 10**6])
def test_the_reference_log_normaliser_is_taken_a_few_rows_at_a_time(tokenizer, monkeypatch,
                                                                     chunk_rows):
    """What the mass term needs from a live reference, (n, k) logits and each position's
    log-sum-exp over the vocabulary, without an (n, V) tensor: the largest one with the
    vocabulary as last dimension is the head's (hidden, V) weight. The check can fail: with
    one chunk for everything, the (n, V) logits are seen."""
    import trimtab.safety_tokens as st

    batch = collate(tokenizer, RECORDS * 4)
    mask = response_mask(batch["labels"])
    vocab, model = len(tokenizer), tiny_llama(len(tokenizer), seed=5)
    n, hidden = int(mask.sum()), model.config.hidden_size
    assert n > hidden  # an (n, V) tensor is told apart from the weight by its rows
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(WORDS))
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits[:, :-1][mask]
        expected = torch.cat([full[:, ids], full.logsumexp(-1, keepdim=True)], 1)
        monkeypatch.setattr(st, "LSE_CHUNK_ELEMENTS", chunk_rows * vocab)
        with _Shapes() as mode:
            got = st.restricted_logits(model, batch, ids, mask, with_lse=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    rows = max(math.prod(s[:-1]) for s in mode.shapes if s and s[-1] == vocab)
    assert rows == (hidden if chunk_rows < hidden else n)


def test_pact_makes_no_full_vocabulary_tensor_beyond_what_sft_makes(tokenizer, batch, objective):
    # Pad the vocabulary to a size no other dimension has, so the count is unambiguous.
    vocab = 257
    policy = tiny_llama(vocab)
    reference = Reference(policy, tiny_llama(vocab, seed=1))
    n_sft = _full_vocab_tensors(lambda: SFTObjective()(policy, batch), vocab)
    n_pact = _full_vocab_tensors(lambda: objective(policy, batch, reference), vocab)
    n_kl = _full_vocab_tensors(lambda: get_method("kl")()(policy, batch, reference), vocab)
    assert n_sft > 0
    assert n_pact == n_sft  # the safety term indexes logits[..., S]: only (n, k) tensors
    assert n_kl > n_sft  # the check can fail: a full-vocabulary KL is caught


def _backward_allocations(loss: torch.Tensor, min_bytes: int) -> list[tuple[str, int]]:
    """(op, bytes) of every allocation of at least `min_bytes` while `loss` backpropagates.

    Read from the profiler, which holds no tensor: a TorchDispatchMode would keep references
    that stop autograd from adding gradients in place, and so change what it measures. The
    engine's `evaluate_function` events are left out: theirs is the memory an op made less
    what the engine freed meanwhile (its inputs, once no other node needs them), which moves
    with when Python lets go of a tensor; the ops inside them are counted."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    return sorted((e.name, e.cpu_memory_usage) for e in prof.events()
                  if e.cpu_memory_usage >= min_bytes
                  and not e.name.startswith("autograd::engine::evaluate_function"))


@pytest.mark.parametrize("mass_weight", [0.0, 1.0])
def test_pact_backward_makes_no_full_vocabulary_tensor_beyond_what_sft_makes(
        tokenizer, batch, objective, mass_weight):
    vocab = 257
    policy = tiny_llama(vocab)
    reference = Reference(policy, tiny_llama(vocab, seed=1))
    objective.config = PACTConfig(mass_weight=mass_weight)
    n_v = int(response_mask(batch["labels"]).sum()) * vocab * 4  # one (n, V) float32 tensor
    runs = {}
    composed = CompositeObjective([SFTObjective(), objective])  # pact's term on sft's logits
    for name, run in {"sft": lambda: SFTObjective()(policy, batch),
                      "pact": lambda: objective(policy, batch, reference),
                      "sft+pact": lambda: composed(policy, batch, reference),
                      "kl": lambda: get_method("kl")()(policy, batch, reference)}.items():
        runs[name] = _backward_allocations(run().loss, n_v)
        policy.zero_grad()
    assert runs["sft"]  # the CE's gradient of the logits, the lm_head's weight gradient
    assert runs["pact"] == runs["sft"]
    assert runs["sft+pact"] == runs["sft"]
    assert len(runs["kl"]) > len(runs["sft"])  # the check can fail: a full-vocabulary KL is caught


def _pact_like_loss(logits: torch.Tensor, ids: torch.Tensor, targets: torch.Tensor, rows: int,
                    sparse: bool) -> torch.Tensor:
    """CE on all rows plus a mass-term-like function of the first `rows` rows' safety-token and
    target logits, picked as pact picks them now (`sparse`) or as it did before: `logits[:, S]`
    and a separate gather of the target logit."""
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    view = logits[:rows]
    if sparse:
        picked = columns(view, torch.cat([ids.expand(rows, -1), targets[:rows, None]], 1),
                         sparse_grad=True)
        policy_s, target_logit = picked[:, :-1], picked[:, -1]
    else:
        policy_s, target_logit = view[:, ids], view.gather(1, targets[:rows, None]).squeeze(1)
    lse = nll[:rows] + target_logit
    return nll.mean() + (torch.log_softmax(policy_s / 2, -1)[:, 0] - lse).pow(2).mean()


@pytest.mark.parametrize("rows", [48, 24])
def test_sparse_column_gradient_equals_the_dense_one_bit_for_bit(rows):
    """The column pick sums gradients in the order pact's dense pick did, also where a row's
    target is one of the picked columns, and also on a view of the first rows (24 of 48: the
    training rows of `pact+gated`'s stacked forward); the dense pick's buffers are gone."""
    torch.manual_seed(0)
    n, vocab = 48, 257
    ids = torch.randperm(vocab)[:6]
    targets = ids[torch.randint(0, 6, (n,))]  # most targets are picked columns too
    targets[::4] = torch.randint(0, vocab, (n // 4,))
    x, w = torch.randn(n, 32), torch.randn(32, vocab)
    runs = []
    for sparse in (False, True):
        leaf = x.clone().requires_grad_(True)
        loss = _pact_like_loss(leaf @ w, ids, targets, rows, sparse)
        made = _backward_allocations(loss, n * vocab * 4)
        runs.append((loss.detach(), leaf.grad, len(made)))
    (loss_dense, grad_dense, n_dense), (loss_sparse, grad_sparse, n_sparse) = runs
    assert torch.equal(loss_dense, loss_sparse)
    assert torch.equal(grad_dense, grad_sparse)
    assert n_sparse < n_dense


@pytest.mark.parametrize("mass_weight", [0.0, 1.0])
def test_the_penalty_alone_backpropagates(tokenizer, batch, objective, mass_weight):
    # no CE of the caller's beside it: a sparse gradient alone would reach nodes upstream
    # that take dense ones only, so the pick must fall back to the dense gradient
    policy = tiny_llama(len(tokenizer))
    reference = Reference(policy, tiny_llama(len(tokenizer), seed=1))
    objective.config = PACTConfig(mass_weight=mass_weight)
    resp = select_response(forward_logits(policy, batch), batch["labels"])
    term, _ = objective.penalty(resp, batch, reference)
    term.backward()
    assert policy.lm_head.weight.grad.abs().sum() > 0


def test_training_pushes_zero_weight_tokens_down_within_the_set(tokenizer, batch, objective):
    policy = tiny_llama(len(tokenizer))
    reference = Reference(policy, copy.deepcopy(policy))
    objective.config = PACTConfig(lam=1.0)
    ids = torch.tensor(tokenizer.convert_tokens_to_ids(WORDS))
    zero = [i for i, w in enumerate(WEIGHTS) if w == 0]
    mask = response_mask(batch["labels"])

    def zero_mass() -> float:
        with torch.no_grad():
            s = restricted_logits(policy, batch, ids, mask)
        return torch.softmax(s / 2.0, -1)[:, zero].sum(-1).mean().item()

    before = zero_mass()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    policy.train()
    for _ in range(10):
        opt.zero_grad()
        out = objective(policy, batch, reference)
        # only the safety term: lam * KL without the CE
        (out.loss - SFTObjective()(policy, batch).loss).backward()
        opt.step()
    assert zero_mass() < 0.5 * before


@pytest.mark.parametrize("mass_weight", [0.0, 1.0])
def test_cached_reference_gives_the_same_loss_as_a_reference_forward(tmp_path, tokenizer,
                                                                     batch, mass_weight,
                                                                     monkeypatch):
    from trimtab.training.run import save_model

    ref_model = tiny_llama(len(tokenizer), seed=5)
    save_model(ref_model, tokenizer, tmp_path / "ref")
    tokens = token_set(tokenizer, WORDS, WEIGHTS).save(tmp_path / "tokens.json")
    ctx = TrainingContext(records=RECORDS, tokenizer=tokenizer, model_path=tmp_path / "ref",
                          reference_path=tmp_path / "ref", train_config=TrainConfig())
    cached = PACTObjective(PACTConfig(token_file=str(tokens), mass_weight=mass_weight))
    cached.setup(ctx)
    assert not cached.needs_reference  # the trainer loads no reference model
    live = PACTObjective(PACTConfig(token_file=str(tokens), cache_reference=False,
                                    mass_weight=mass_weight))
    live.setup(ctx)
    assert live.needs_reference
    policy = tiny_llama(len(tokenizer), seed=6)
    a = cached(policy, batch, None)
    b = live(policy, batch, Reference(policy, ref_model))
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-5)
    assert a.metrics["safety_kl"] == pytest.approx(b.metrics["safety_kl"], rel=1e-5)
    if mass_weight:
        assert a.metrics["mass_kl"] == pytest.approx(b.metrics["mass_kl"], rel=1e-4)
        assert a.metrics["mass_kl"] > 0
        # and with the cache the mass term still makes no full-vocabulary tensor beyond sft's
        n_sft = _full_vocab_tensors(lambda: SFTObjective()(policy, batch), len(tokenizer))
        assert _full_vocab_tensors(lambda: cached(policy, batch, None), len(tokenizer)) == n_sft
        # the live reference's log-sum-exp taken 3 rows at a time gives the same term
        import trimtab.safety_tokens as st

        monkeypatch.setattr(st, "LSE_CHUNK_ELEMENTS", 3 * len(tokenizer))
        again = live(policy, batch, Reference(policy, ref_model))
        assert again.metrics["mass_kl"] == pytest.approx(b.metrics["mass_kl"], rel=1e-5)
    # a batch whose records changed after setup is caught, not silently misaligned
    shuffled = {**batch, "sample_index": batch["sample_index"].flip(0)}
    with pytest.raises(TrimtabError, match="does not match"):
        cached(policy, shuffled, None)


def test_setup_refuses_a_token_file_from_another_tokenizer(tmp_path, tokenizer):
    other = build_word_tokenizer(["a b c d"])
    tokens = token_set(tokenizer, WORDS, WEIGHTS)
    path = tokens.save(tmp_path / "tokens.json")
    obj = PACTObjective(PACTConfig(token_file=str(path)))
    ctx = TrainingContext(records=RECORDS, tokenizer=other, model_path=tmp_path,
                          reference_path=tmp_path, train_config=TrainConfig())
    with pytest.raises(TrimtabError, match="another tokenizer"):
        obj.setup(ctx)


def test_setup_without_a_world_or_file_says_how_to_build_one(tmp_path, tokenizer):
    ctx = TrainingContext(records=RECORDS, tokenizer=tokenizer, model_path=tmp_path,
                          reference_path=tmp_path, train_config=TrainConfig())
    with pytest.raises(TrimtabError, match="trimtab safety-tokens"):
        PACTObjective().setup(ctx)


def test_compute_before_setup_is_a_clear_error(tokenizer, batch):
    policy = tiny_llama(len(tokenizer))
    with pytest.raises(TrimtabError, match="setup"):
        PACTObjective()(policy, batch, Reference(policy, copy.deepcopy(policy)))


def test_pact_on_the_quick_world_builds_its_tokens_and_logs_the_kl(quick_refs, quick_world):
    from trimtab.pipeline import Cell, training_records
    from trimtab.training.run import finetune

    records = training_records(quick_world, Cell("pact", 0.1, "general", 0))
    objective = get_method("pact")()
    config = TrainConfig(max_steps=4, per_device_train_batch_size=16, logging_steps=2,
                         progress=False)
    result = finetune(quick_refs.aligned, records, objective, config,
                      reference_path=quick_refs.aligned, base_path=quick_refs.base,
                      world=quick_world)
    words = set(objective.tokens.tokens)
    assert {"i", "sorry", "not"} <= words
    logged = [h for h in result.log_history if "pact/safety_kl" in h]
    assert logged and all(h["pact/safety_kl"] >= 0 for h in logged)
    # a second setup reuses the cached file instead of re-selecting
    again = get_method("pact")()
    again.setup(TrainingContext(records=records, tokenizer=result.tokenizer,
                                model_path=quick_refs.aligned,
                                reference_path=quick_refs.aligned, train_config=config,
                                base_path=quick_refs.base, world=quick_world,
                                artifacts_dir=artifacts_root()))
    assert again.token_path == objective.token_path

