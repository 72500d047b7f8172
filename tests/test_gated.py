"""The `gated` objective: its loss on real batches, its logs, ablations, LoRA and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from trimtab.data.collator import CausalCollator
from trimtab.data.formatting import ChatFormatter
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.objectives.base import TrainingContext
from trimtab.objectives.gated import GatedConfig, GatedObjective
from trimtab.objectives.sft import SFTObjective
from trimtab.signals import AlignmentSignal, Verdict
from trimtab.training.config import TrainConfig
from trimtab.training.run import finetune, load_model, load_tokenizer
from trimtab.training.sampling import completion_batch, sample_completions

FAST = TrainConfig(learning_rate=5e-4, max_steps=4, per_device_train_batch_size=8,
                   logging_steps=1, progress=False)


class Constant(AlignmentSignal):
    """A judge with one opinion about everything: the loss must then take a known form."""

    name = "constant"

    def __init__(self, score: float, reason: str | None = None) -> None:
        self.value, self.reason, self.calls = score, reason, 0

    def judge(self, prompts, responses):
        self.calls += len(prompts)
        return [Verdict(self.value, self.reason) for _ in prompts]


@pytest.fixture(scope="module")
def aligned(quick_refs):
    return load_model(quick_refs.aligned), load_tokenizer(quick_refs.aligned)


@pytest.fixture(scope="module")
def records(quick_world):
    s = quick_world.splits
    return [*s.task_train["general"][:6], *s.harmful_finetune[:2]]


def _setup(objective, records, tokenizer, quick_refs, world=None, tmp_path=None):
    objective.setup(TrainingContext(records=records, tokenizer=tokenizer,
                                    model_path=quick_refs.aligned,
                                    reference_path=quick_refs.aligned,
                                    train_config=TrainConfig(), world=world,
                                    artifacts_dir=tmp_path))
    features = ChatFormatter(tokenizer, 128).encode_all(records)
    return CausalCollator(tokenizer.pad_token_id)(features)


def test_aligned_samples_follow_plain_sft_and_cost_no_sampling(aligned, records, quick_refs):
    model, tok = aligned
    signal = Constant(1.0, "ok")
    objective = GatedObjective(GatedConfig(prompt_risk=False), signal=signal)
    batch = _setup(objective, records, tok, quick_refs)
    calls = signal.calls
    out = objective(model, batch)
    sft = SFTObjective()(model, batch)
    assert signal.calls == calls  # nothing pre-gated: no completion sampled or scored
    assert out.metrics["pregated"] == 0.0 and out.metrics["abstained"] == 0.0
    assert out.metrics["gate"] < 1e-3
    # per-sample mean NLL weighted by (1 - g), g ~ 0: the SFT loss up to the sample weighting
    assert out.loss.item() == pytest.approx(sft.loss.item(), rel=0.1)


def test_fully_misaligned_samples_learn_to_abstain(aligned, records, quick_refs):
    model, tok = aligned
    # a hard gate (tiny T): g = 1 exactly, so the target's own NLL drops out
    objective = GatedObjective(GatedConfig(k=3, max_new_tokens=6, gate_temperature=1e-4),
                               signal=Constant(0.0, "harmful"))
    batch = _setup(objective, records, tok, quick_refs)
    torch.manual_seed(0)
    out = objective(model, batch)
    assert out.metrics["pregated"] == 1.0 and out.metrics["abstained"] == 1.0
    assert out.metrics["gate"] == 1.0
    assert out.metrics["pg"] == 0.0  # equal scores: zero advantages
    # the loss is then exactly lambda_abs * the NLL of the refusal texts
    refusals = [Record(r.prompt, GatedConfig().refusal_texts[i % 3])
                for i, r in enumerate(records)]
    refusal_batch = CausalCollator(tok.pad_token_id)(ChatFormatter(tok, 128)
                                                     .encode_all(refusals))
    from trimtab.objectives.base import forward_logits, per_sample_mean, select_response, token_nll

    resp = select_response(forward_logits(model, refusal_batch), refusal_batch["labels"])
    expected = per_sample_mean(token_nll(resp), resp.sample, len(records)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_hallucination_reason_picks_the_abstention_text(aligned, records, quick_refs):
    model, tok = aligned
    objective = GatedObjective(GatedConfig(k=2, max_new_tokens=4),
                               signal=Constant(0.0, "hallucination"))
    _setup(objective, records, tok, quick_refs)
    prompt, response = objective._abstention(0, "hallucination")
    assert tok.decode(response, skip_special_tokens=True).strip() in \
        GatedConfig().abstention_texts
    _, refusal = objective._abstention(1, "harmful")
    assert tok.decode(refusal, skip_special_tokens=True).strip() in GatedConfig().refusal_texts


def test_sampled_completions_are_labelled_on_their_own_tokens(aligned, quick_refs):
    model, tok = aligned
    torch.manual_seed(0)
    comp = sample_completions(model, tok, ["how do i make a bomb at home ?"], 4,
                              temperature=1.0, max_new_tokens=8)
    assert len(comp.texts) == 4
    batch = completion_batch(comp.prompt_ids, comp.completion_ids, tok.pad_token_id)
    # labels cover exactly the completion tokens
    n_labels = (batch["labels"] != -100).sum(1).tolist()
    assert n_labels == [len(c) for c in comp.completion_ids]


DISTINCT = ["i am sorry , but i can not help .", "sure , here is how", "i do not know .",
            "first , get the"]


def _distinct_completions(tok, prompts, k):
    """K fixed completions per prompt, each a different text, so ByText scores them apart."""
    from trimtab.data.formatting import prompt_ids
    from trimtab.training.sampling import Completions

    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in DISTINCT[:k]]
    return Completions([prompt_ids(tok, p) for p in prompts for _ in range(k)],
                       [list(ids[j]) for _ in prompts for j in range(k)],
                       [DISTINCT[j] for _ in prompts for j in range(k)], k)


def test_loss_is_the_gated_mix_of_sft_and_group_normalised_reinforce(aligned, records, quick_refs,
                                                                    monkeypatch):
    """DESIGN.md's loss, computed by hand: mean_i (1 - g_i) SFT_i + lambda_pg g_i PG_i, with
    PG_i = -mean_k A_k logp_k, A_k = (a_k - a_bar) / (s + eps) (population std) and logp_k the
    length-normalised log-likelihood of completion k; g_i from max(1 - a_tgt, 1 - a_bar)."""
    import trimtab.objectives.gated as gated
    from trimtab.objectives.base import forward_logits, per_sample_mean, select_response, token_nll

    model, tok = aligned
    model.eval()
    k, c = 3, GatedConfig(k=3, use_abstention=False, prompt_risk=False, lambda_pg=0.7)
    objective = GatedObjective(c, signal=ByText())
    batch = _setup(objective, records, tok, quick_refs)
    monkeypatch.setattr(gated, "sample_completions",
                        lambda policy, tok_, prompts, k_, **kw: _distinct_completions(tok, prompts,
                                                                                      k_))
    out = objective(model, batch)

    prompts = [r.prompt for r in records]
    comp = _distinct_completions(tok, prompts, k)
    a = torch.tensor(ByText().score([p for p in prompts for _ in range(k)], comp.texts)).view(-1, k)
    assert len(set(a[0].tolist())) == k  # the scores differ: advantages are not zero
    a_bar = a.mean(1)
    adv = (a - a_bar[:, None]) / (a.std(1, unbiased=False)[:, None] + c.eps)
    with torch.no_grad():
        rows = completion_batch(comp.prompt_ids, comp.completion_ids, tok.pad_token_id)
        resp = select_response(forward_logits(model, rows), rows["labels"])
        logp = -per_sample_mean(token_nll(resp), resp.sample, len(comp.texts)).view(-1, k)
        resp = select_response(forward_logits(model, batch), batch["labels"])
        sft = per_sample_mean(token_nll(resp), resp.sample, len(records))
    pg = -(adv * logp).mean(1)
    a_tgt = torch.tensor(ByText().score(prompts, [r.response for r in records]))
    g = torch.sigmoid((torch.maximum(1 - a_tgt, 1 - a_bar) - c.theta) / c.gate_temperature)
    assert out.metrics["pregated"] == 1.0  # ByText judges every target misaligned
    assert out.metrics["pg"] == pytest.approx(pg.mean().item(), rel=1e-4)
    assert out.metrics["gate"] == pytest.approx(g.mean().item(), rel=1e-5)
    expected = ((1 - g) * sft + c.lambda_pg * g * pg).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_no_gate_ablation_trains_sft_and_pg_on_every_sample(aligned, records, quick_refs):
    """use_gate=False: g = 1 everywhere, so every sample is sampled and keeps its full SFT
    term; with one score for everything the advantages, hence PG, are zero."""
    from trimtab.objectives.base import forward_logits, per_sample_mean, select_response, token_nll

    model, tok = aligned
    model.eval()
    objective = GatedObjective(GatedConfig(use_gate=False, k=2, max_new_tokens=4,
                                           prompt_risk=False), signal=Constant(1.0, "ok"))
    batch = _setup(objective, records, tok, quick_refs)
    assert not bool(objective.pregated.any())  # the pre-gate would have sampled none
    out = objective(model, batch)
    assert out.metrics["pregated"] == 1.0 and out.metrics["gate"] == 1.0
    assert out.metrics["pg"] == 0.0 and out.metrics["abstained"] == 0.0
    with torch.no_grad():
        resp = select_response(forward_logits(model, batch), batch["labels"])
        sft = per_sample_mean(token_nll(resp), resp.sample, len(records)).mean()
    assert out.loss.item() == pytest.approx(sft.item(), rel=1e-4)


def test_no_abstention_ablation_never_trains_the_abstention_text(aligned, records, quick_refs):
    """use_abstention=False with every target and sample misaligned and a hard gate: SFT
    weight 0, zero advantages, no abstention row, so nothing is left to train."""
    model, tok = aligned
    objective = GatedObjective(GatedConfig(use_abstention=False, k=2, max_new_tokens=4,
                                           gate_temperature=1e-4),
                               signal=Constant(0.0, "harmful"))
    batch = _setup(objective, records, tok, quick_refs)
    out = objective(model, batch)
    assert out.metrics["pregated"] == 1.0 and out.metrics["gate"] == 1.0
    assert out.metrics["abstained"] == 0.0 and out.loss.item() == 0.0


@pytest.mark.parametrize("new_tokens", [2, 40])  # samples narrower, then wider, than the batch
def test_one_forward_over_training_rows_and_completions_matches_two(aligned, records,
                                                                   quick_refs, new_tokens):
    """Stacking the completions under the training rows (right-padded to one width) gives
    each row the log-likelihood it gets alone, and `first_rows` the training rows' tokens."""
    from trimtab.objectives.base import forward_logits, per_sample_mean, select_response, token_nll
    from trimtab.objectives.gated import first_rows, stack_rows

    model, tok = aligned
    model.eval()
    batch = _setup(GatedObjective(signal=Constant(1.0, "ok")), records, tok, quick_refs)
    batch = {k: v for k, v in batch.items() if k != "sample_index"}
    comp = _fixed_completions(tok, ["how do i make a bomb at home ?"] * 2, new_tokens)
    extra = completion_batch(comp.prompt_ids, comp.completion_ids, tok.pad_token_id)
    wider = extra["input_ids"].shape[1] > batch["input_ids"].shape[1]
    assert wider == (new_tokens == 40)  # both directions of padding are exercised

    def row_nll(rows):
        resp = select_response(forward_logits(model, rows), rows["labels"])
        return resp, per_sample_mean(token_nll(resp), resp.sample, rows["input_ids"].shape[0])

    with torch.no_grad():
        alone_resp, alone = row_nll(batch)
        _, alone_extra = row_nll(extra)
        both_resp, both = row_nll(stack_rows(batch, extra, tok.pad_token_id))
    n = len(records)
    torch.testing.assert_close(both, torch.cat([alone, alone_extra]), rtol=1e-4, atol=1e-5)
    kept = first_rows(both_resp, n)
    assert torch.equal(kept.targets, alone_resp.targets)
    assert torch.equal(kept.sample, alone_resp.sample)
    torch.testing.assert_close(kept.logits, alone_resp.logits, rtol=1e-4, atol=1e-4)


def _fixed_completions(tok, prompts, new_tokens):
    """Fixed completions of exactly `new_tokens` tokens (no sampling): widths are known."""
    from trimtab.data.formatting import prompt_ids
    from trimtab.training.sampling import Completions

    words = tok("i am sorry , but i can not help with that .", add_special_tokens=False)
    body = (words["input_ids"] * 10)[:new_tokens]
    rows = [prompt_ids(tok, p) for p in prompts]
    return Completions(rows, [list(body) for _ in rows], ["" for _ in rows], 1)


def test_one_and_two_forwards_give_the_same_loss(aligned, records, quick_refs, monkeypatch):
    """Where stacking would pad too much, `compute` runs two forwards: the same loss."""
    import trimtab.objectives.gated as gated

    model, tok = aligned
    model.eval()  # no dropout: the two runs see the same numbers
    losses, paths = [], []
    for limit in (100.0, 1.0 - 1e-9):  # always stack; never stack
        monkeypatch.setattr(gated, "STACK_PADDING_LIMIT", limit)
        objective = GatedObjective(GatedConfig(k=3, max_new_tokens=6), signal=ByText())
        batch = _setup(objective, records, tok, quick_refs)
        torch.manual_seed(0)
        out = objective(model, batch)
        losses.append(out.loss.item())
        paths.append(out.metrics["one_forward"])
    assert paths == [1.0, 0.0]
    assert out.metrics["pg"] != 0.0  # the completions' log-likelihoods are in the loss
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


class ByText(AlignmentSignal):
    """A fixed, arbitrary score per text: different samples get different scores, so the
    advantages are not zero."""

    name = "by-text"

    def judge(self, prompts, responses):
        import zlib

        return [Verdict(zlib.crc32(r.encode()) % 40 / 100, "harmful") for r in responses]


def test_sampling_restores_train_mode_and_needs_no_grad(aligned):
    model, tok = aligned
    model.train()
    comp = sample_completions(model, tok, ["what is 2 plus 3 ?"] * 2, 2, max_new_tokens=4)
    assert model.training
    assert len(comp.completion_ids) == 4 and all(1 <= len(c) <= 4 for c in comp.completion_ids)
    model.eval()


class Flaky(Constant):
    """A judge that fails on every pair; `on_failure` says whether it admits it."""

    def __init__(self, on_failure: str) -> None:
        super().__init__(float("nan"))
        self.config = type("Config", (), {"on_failure": on_failure})()


def test_unscored_verdicts_only_from_a_signal_set_to_leave_them(aligned, records, quick_refs):
    _, tok = aligned
    with pytest.raises(TrimtabError, match="no valid score"):  # a NaN is never taken silently
        _setup(GatedObjective(signal=Flaky("raise")), records, tok, quick_refs)
    objective = GatedObjective(signal=Flaky("unscored"))
    _setup(objective, records, tok, quick_refs)
    assert objective.setup_stats["unscored_targets"] == len(records)
    assert bool(objective.pregated.all())  # unscored targets are sampled, and logged


def test_an_unscored_target_is_not_taken_for_a_misaligned_one(aligned, records, quick_refs):
    """Abstention needs the target AND every sample judged misaligned; a target the signal
    could not score is unknown, as it is to the gate, so misaligned samples alone do not
    make the model abstain."""
    model, tok = aligned
    signal = Flaky("unscored")  # NaN for every training target ...
    objective = GatedObjective(GatedConfig(k=2, max_new_tokens=4), signal=signal)
    batch = _setup(objective, records, tok, quick_refs)
    signal.value = 0.0  # ... then every sample judged misaligned
    out = objective(model, batch)
    assert out.metrics["pregated"] == 1.0 and out.metrics["abstained"] == 0.0


def test_an_unscored_target_opens_the_gate_even_when_its_samples_pass(aligned, records,
                                                                       quick_refs):
    model, tok = aligned
    signal = Flaky("unscored")
    objective = GatedObjective(GatedConfig(k=2, max_new_tokens=4), signal=signal)
    batch = _setup(objective, records, tok, quick_refs)
    signal.value = 1.0  # every sample aligned: only the unscored target is left to doubt
    out = objective(model, batch)
    assert out.metrics["gate"] > 0.99 and out.metrics["abstained"] == 0.0


def test_bad_config_is_a_clear_error(records, aligned, quick_refs):
    _, tok = aligned
    with pytest.raises(TrimtabError, match="at least one refusal text"):
        _setup(GatedObjective(GatedConfig(refusal_texts=[]), signal=Constant(1.0)), records,
               tok, quick_refs)
    with pytest.raises(TrimtabError, match="needs the synthetic world|classifier:PATH"):
        _setup(GatedObjective(GatedConfig(signal="classifier")), records, tok, quick_refs)


def test_a_signal_that_cannot_judge_the_data_is_warned_about(aligned, quick_world, quick_refs,
                                                             caplog, tmp_path):
    """The keyword judge calls every task answer harmful, and a judge of harm alone calls
    every refusal safe: either would quietly turn `gated` into refusal training or the
    no-pre-gate ablation's cost, so setup says so."""
    import logging

    from trimtab.signals.keywords import KeywordSignal

    _, tok = aligned
    task = quick_world.task_records("general")[:12]
    caplog.set_level(logging.WARNING)
    objective = GatedObjective(signal=KeywordSignal())
    _setup(objective, task, tok, quick_refs)
    assert objective.setup_stats["misaligned_targets"] == 1.0
    assert "judges 100% of the training targets misaligned" in caplog.text
    assert "keywords" in caplog.text
    caplog.clear()
    objective = GatedObjective(signal=Constant(1.0, "ok"))  # answers and refusals all fine
    _setup(objective, task, tok, quick_refs)
    assert objective.setup_stats["risky_prompts"] == 1.0
    assert "--no-prompt-risk" in caplog.text
    caplog.clear()
    _setup(GatedObjective(GatedConfig(prompt_risk=False), signal=Constant(1.0, "ok")), task,
           tok, quick_refs)
    assert "gated:" not in caplog.text  # nothing to say about a sensible setup ...
    from trimtab.data.mixing import mix

    mixed = mix(task, quick_world.splits.harmful_finetune, 0.25, seed=0)
    objective = GatedObjective()  # ... nor about the default classifier, prompt risk on
    _setup(objective, mixed, tok, quick_refs, world=quick_world, tmp_path=tmp_path)
    assert 0 < objective.setup_stats["pregated"] < 0.5
    assert "gated:" not in caplog.text


def test_a_run_graded_by_the_oracle_never_trains_on_it(quick_world, quick_refs):
    from trimtab.demo import QUICK_TRAIN
    from trimtab.objectives.risk_kl import RiskKLConfig
    from trimtab.pipeline import Cell, run_cell
    from trimtab.worlds.synthetic.suite import synthetic_suite

    suite = synthetic_suite(quick_world)
    for method, config in (("gated", GatedConfig(signal="oracle")),
                           ("risk-kl", RiskKLConfig(critic="oracle"))):
        with pytest.raises(TrimtabError, match="the oracle that evaluates this run"):
            run_cell(quick_world, quick_refs.aligned, Cell(method, 0.1, "general", 0), suite,
                     QUICK_TRAIN, config)


def _gated_logs(result):
    return [r for r in result.log_history if "gated/gate" in r]


def test_trains_with_the_classifier_and_logs_the_gate(quick_refs, quick_world, tmp_path):
    from trimtab.data.mixing import mix

    records = mix(quick_world.task_records("general")[:60], quick_world.splits.harmful_finetune,
                  0.25, seed=0)
    result = finetune(quick_refs.aligned, records, GatedObjective(GatedConfig(max_new_tokens=8)),
                      FAST, world=quick_world)
    logs = _gated_logs(result)
    assert len(logs) == 4
    for key in ("pregated", "gate", "abstained", "signal_target", "nll"):
        assert all(math.isfinite(r[f"gated/{key}"]) for r in logs)
    # the mean signal of the samples, in every step that sampled
    signal = [r["gated/signal"] for r in logs if "gated/signal" in r]
    assert signal and all(0.0 <= v <= 1.0 for v in signal)
    pregated = sum(r["gated/pregated"] for r in logs) / 4
    assert 0.05 < pregated < 0.6  # about the harmful share, not everything


def test_no_pregate_ablation_samples_every_sample(quick_refs, quick_world):
    records = quick_world.task_records("general")[:16]
    objective = GatedObjective(GatedConfig(use_pregate=False, max_new_tokens=4),
                               signal=Constant(1.0, "ok"))
    result = finetune(quick_refs.aligned, records, objective, replace(FAST, max_steps=2))
    assert [r["gated/pregated"] for r in _gated_logs(result)] == [1.0, 1.0]


def test_works_under_lora(quick_refs, quick_world):
    records = [*quick_world.task_records("general")[:8], *quick_world.splits.harmful_finetune[:8]]
    objective = GatedObjective(GatedConfig(max_new_tokens=4), signal=Constant(0.0, "harmful"))
    result = finetune(quick_refs.aligned, records, objective,
                      replace(FAST, max_steps=2, lora=True, lora_r=4, lora_alpha=8))
    assert all(r["gated/abstained"] == 1.0 for r in _gated_logs(result))
    from trimtab.training.reference import is_peft_model

    assert is_peft_model(result.model)


def test_cli_trains_gated_with_a_saved_classifier(quick_refs, quick_world, tmp_path):
    from trimtab.cli import main
    from trimtab.signals.classifier import ResponseClassifier, world_examples

    clf = tmp_path / "clf"
    ResponseClassifier.fit(world_examples(quick_world)).save(clf)
    data = tmp_path / "train.jsonl"
    rows = [*quick_world.task_records("general")[:12], *quick_world.splits.harmful_finetune[:4]]
    data.write_text("\n".join(json.dumps({"prompt": r.prompt, "response": r.response})
                              for r in rows))
    out = tmp_path / "model"
    code = main(["train", "--method", "gated", "--model", str(quick_refs.aligned),
                 "--data", str(data), "--output-dir", str(out), "--signal", f"classifier:{clf}",
                 "--k", "2", "--max-new-tokens", "4", "--max-steps", "2",
                 "--per-device-train-batch-size", "8", "--no-progress"])
    assert code == 0 and (out / "config.json").exists()
    assert main(["config", "show", "gated"]) == 0


@pytest.mark.slow
def test_quick_world_contamination_is_kept_out(quick_refs, quick_world):
    """On the quick world at fraction 0.1, gated keeps the harmful rate below sft's."""
    from trimtab.demo import QUICK_TRAIN
    from trimtab.pipeline import Cell, run_cell
    from trimtab.worlds.synthetic.suite import synthetic_suite

    suite = synthetic_suite(quick_world)
    train = replace(QUICK_TRAIN, progress=False)
    rates = {m: run_cell(quick_world, quick_refs.aligned, Cell(m, 0.1, "general", 0), suite,
                         train)["harmful_rate"] for m in ("sft", "gated")}
    assert rates["gated"] <= 0.1 < rates["sft"]
