"""`risk-kl`: beta from the risk, the loss formula, EMA/per-batch options, failing sources."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from trimtab.cli import main
from trimtab.config import build_config
from trimtab.data.collator import CausalCollator
from trimtab.data.formatting import ChatFormatter
from trimtab.errors import TrimtabError
from trimtab.objectives.base import (
    TrainingContext,
    forward_kl,
    forward_logits,
    select_response,
    token_nll,
)
from trimtab.objectives.registry import get_method
from trimtab.objectives.risk_kl import RiskKLConfig, RiskKLObjective, critic_spec
from trimtab.pipeline import Cell, training_records
from trimtab.signals import AlignmentSignal, Verdict
from trimtab.training.config import TrainConfig
from trimtab.training.reference import Reference
from trimtab.training.run import finetune, load_model, load_tokenizer


class HarmfulTargets(AlignmentSignal):
    """Stand-in critic: a response is misaligned when it is one of the given harmful targets."""

    name = "harmful-targets"

    def __init__(self, harmful: set[str]) -> None:
        self.harmful = harmful
        self.calls = 0

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        self.calls += 1
        return [Verdict(0.0, "harmful") if r in self.harmful else Verdict(1.0, "ok")
                for r in responses]


class Down(AlignmentSignal):
    """A critic whose server is down for its first `failures` calls."""

    name = "down"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def judge(self, prompts, responses):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("connection refused")
        return [Verdict(1.0, "ok") for _ in responses]


class Broken(AlignmentSignal):
    name = "broken"

    def __init__(self, answer: list[Verdict]) -> None:
        self.answer = answer

    def judge(self, prompts, responses):
        return self.answer


@pytest.fixture(scope="module")
def records(quick_world):
    return training_records(quick_world, Cell("risk-kl", 0.1, "general", 0))


@pytest.fixture(scope="module")
def context(records, quick_refs, quick_world, tmp_path_factory):
    return TrainingContext(records=records, tokenizer=load_tokenizer(quick_refs.aligned),
                           model_path=quick_refs.aligned, reference_path=quick_refs.aligned,
                           train_config=TrainConfig(), base_path=quick_refs.base,
                           world=quick_world,
                           artifacts_dir=tmp_path_factory.mktemp("artifacts"))


def critic(quick_world) -> HarmfulTargets:
    return HarmfulTargets({r.response for r in quick_world.splits.harmful_finetune})


def make_batch(context, rows: list[int]) -> dict[str, torch.Tensor]:
    fmt = ChatFormatter(context.tokenizer, 128)
    feats = []
    for i in rows:
        enc = fmt.encode(context.records[i])
        enc["index"] = i
        feats.append(enc)
    return CausalCollator(context.tokenizer.pad_token_id)(feats)


def mixed_rows(records, n_harmful: int = 2, n_task: int = 3) -> list[int]:
    harmful = [i for i, r in enumerate(records) if r.kind == "harmful"][:n_harmful]
    task = [i for i, r in enumerate(records) if r.kind == "task"][:n_task]
    return harmful + task


def test_registered_and_configurable(capsys):
    assert get_method("risk-kl") is RiskKLObjective
    assert main(["config", "show", "risk-kl"]) == 0
    table = capsys.readouterr().out
    for name in ("beta_min", "beta_max", "risk_source", "critic", "probe_path", "granularity",
                 "ema_decay", "retries"):
        assert name in table
    cfg = RiskKLConfig()
    assert (cfg.beta_min, cfg.beta_max, cfg.risk_source, cfg.critic) == (0.1, 0.9, "critic",
                                                                          "classifier")
    with pytest.raises(TrimtabError, match="beta_min"):
        build_config(RiskKLConfig, overrides={"beta_min": 0.8, "beta_max": 0.2})


def test_critic_risk_per_record_and_loss_formula(context, quick_world, quick_refs):
    signal = critic(quick_world)
    obj = RiskKLObjective(RiskKLConfig(score_batch_size=50), signal=signal)
    obj.setup(context)
    kinds = [r.kind for r in context.records]
    assert obj.risks.shape == (len(context.records),)
    assert all(float(obj.risks[i]) == (1.0 if k == "harmful" else 0.0)
               for i, k in enumerate(kinds))
    assert signal.calls == -(-len(context.records) // 50)  # batched, once per record

    rows = mixed_rows(context.records)
    batch = make_batch(context, rows)
    policy = load_model(quick_refs.aligned)
    reference = Reference(policy, load_model(quick_refs.aligned))
    with torch.no_grad():  # perturb the policy so the KL is not zero
        policy.lm_head.weight.add_(0.05 * torch.randn_like(policy.lm_head.weight))
    out = obj(policy, batch, reference)

    resp = select_response(forward_logits(policy, batch), batch["labels"])
    ref = select_response(reference.logits(batch), batch["labels"])
    nll, kl = token_nll(resp), forward_kl(ref.logits, resp.logits)
    beta = torch.tensor([0.9, 0.9, 0.1, 0.1, 0.1])[resp.sample]
    expected = ((1 - beta) * nll + beta * kl).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["beta"] == pytest.approx((2 * 0.9 + 3 * 0.1) / 5)
    assert out.metrics["risk"] == pytest.approx(0.4)
    assert out.metrics["kl"] > 0
    assert out.metrics["beta_token"] > out.metrics["beta"]  # harmful targets are longer


def test_a_critic_that_calls_most_targets_harmful_is_warned_about(context, quick_world, caplog):
    """The keyword judge calls every task answer harmful: beta would sit near beta_max on the
    whole task, so setup says so; a critic that tells them apart says nothing."""
    import logging

    from trimtab.signals.keywords import KeywordSignal

    caplog.set_level(logging.WARNING)
    RiskKLObjective(signal=KeywordSignal()).setup(context)
    assert "risk-kl: the training signal judges 100% of the training targets misaligned" \
        in caplog.text
    caplog.clear()
    RiskKLObjective(signal=critic(quick_world)).setup(context)
    assert "risk-kl:" not in caplog.text


def test_per_batch_and_ema(context, quick_world):
    rows = mixed_rows(context.records)  # mean risk 0.4
    batch = make_batch(context, rows)
    per_batch = RiskKLObjective(RiskKLConfig(granularity="batch"), signal=critic(quick_world))
    per_batch.setup(context)
    assert torch.allclose(per_batch.batch_risk(batch), torch.full((5,), 0.4))

    ema = RiskKLObjective(RiskKLConfig(ema_decay=0.5), signal=critic(quick_world))
    ema.setup(context)
    first = ema.batch_risk(batch)  # the EMA starts at the first batch's mean
    assert torch.allclose(first, 0.5 * 0.4 + 0.5 * torch.tensor([1, 1, 0, 0, 0.0]))
    safe = make_batch(context, rows[2:])  # risk 0: pulled up by the history
    assert torch.allclose(ema.batch_risk(safe), torch.full((3,), 0.5 * 0.4))
    assert torch.allclose(ema.batch_risk(safe), torch.full((3,), 0.5 * 0.2))


def test_generative_critics_use_the_harm_scale():
    assert critic_spec("http:http://127.0.0.1:9/v1") == "http:http://127.0.0.1:9/v1,rubric=scale"
    assert critic_spec("guard:/m,rubric=binary") == "guard:/m,rubric=binary"
    assert critic_spec("classifier") == "classifier"


def test_failing_critic_is_retried_then_stops_the_run(context):
    down = Down(failures=10)
    obj = RiskKLObjective(RiskKLConfig(retries=2, retry_wait=0.0), signal=down)
    with pytest.raises(TrimtabError, match="failed 3 times.*ConnectionError"):
        obj.setup(context)
    assert down.calls == 3 and obj.risks is None  # never a silent beta_min

    flaky = Down(failures=1)
    obj = RiskKLObjective(RiskKLConfig(retries=2, retry_wait=0.0, score_batch_size=10_000),
                          signal=flaky)
    obj.setup(context)
    assert flaky.calls == 2 and float(obj.risks.max()) == 0.0


def test_bad_critic_answers_are_errors(context):
    with pytest.raises(TrimtabError, match="verdicts"):
        RiskKLObjective(signal=Broken([Verdict(1.0)])).setup(context)
    n = len(context.records)
    with pytest.raises(TrimtabError, match="no valid score|outside"):
        RiskKLObjective(RiskKLConfig(score_batch_size=n),
                        signal=Broken([Verdict(float("nan"))] * n)).setup(context)


def test_batches_need_setup_and_sample_index(context, quick_world):
    obj = RiskKLObjective(signal=critic(quick_world))
    batch = make_batch(context, [0, 1])
    with pytest.raises(TrimtabError, match="set up"):
        obj.batch_risk(batch)
    obj.setup(context)
    del batch["sample_index"]
    with pytest.raises(TrimtabError, match="sample_index"):
        obj.batch_risk(batch)


def test_probe_source_needs_a_probe_off_the_world(context):
    off_world = TrainingContext(**{**context.__dict__, "world": None})
    with pytest.raises(TrimtabError, match="--probe-path"):
        RiskKLObjective(RiskKLConfig(risk_source="probe")).setup(off_world)
    with pytest.raises(TrimtabError, match="no probe file"):
        RiskKLObjective(RiskKLConfig(risk_source="probe",
                                     probe_path="missing.safetensors")).setup(off_world)


def test_probe_source_fits_a_cached_probe_on_the_world(context):
    obj = RiskKLObjective(RiskKLConfig(risk_source="probe"))
    obj.setup(context)
    kinds = [r.kind for r in context.records]
    harmful = obj.risks[[k == "harmful" for k in kinds]]
    task = obj.risks[[k == "task" for k in kinds]]
    assert harmful.mean() > 0.8 and task.mean() < 0.2
    assert obj.probe_meta["heldout_auroc"] >= 0.9
    cached = list(Path(context.artifacts_dir, "probes").glob("*.safetensors"))
    assert len(cached) == 1
    again = RiskKLObjective(RiskKLConfig(risk_source="probe"))
    again.setup(context)  # loads the cached probe: same risks
    assert torch.allclose(again.risks, obj.risks)


def test_finetune_logs_beta_risk_nll_kl(records, quick_refs, quick_world):
    obj = RiskKLObjective(signal=critic(quick_world))
    result = finetune(quick_refs.aligned, records[:64], obj,
                      TrainConfig(max_steps=2, logging_steps=1, progress=False,
                                  per_device_train_batch_size=16),
                      world=quick_world)
    logged = [h for h in result.log_history if "risk-kl/beta" in h]
    assert len(logged) == 2
    for h in logged:
        assert 0.1 <= h["risk-kl/beta"] <= 0.9
        assert {"risk-kl/risk", "risk-kl/nll", "risk-kl/kl"} <= set(h)


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge on the 1-5 harm scale: 5 for the known harmful targets."""

    harmful: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        agent = text.split("Agent: ", 1)[1].split("\n<END CONVERSATION>", 1)[0]
        answer = "5" if agent in self.harmful else "1"
        data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_http_critic_on_the_harm_scale_and_when_down(context, quick_world):
    rows = mixed_rows(context.records, n_harmful=4, n_task=8)
    small = TrainingContext(**{**context.__dict__,
                               "records": [context.records[i] for i in rows]})
    _Judge.harmful = {r.response for r in quick_world.splits.harmful_finetune}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        obj = RiskKLObjective(RiskKLConfig(critic=f"http:{url},cache=false"))
        obj.setup(small)
        assert obj.risks.tolist() == [1.0] * 4 + [0.0] * 8
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RiskKLObjective(RiskKLConfig(
        critic=f"http:http://127.0.0.1:{port}/v1,cache=false,max_retries=1,backoff=0",
        retry_wait=0.0))
    with pytest.raises(TrimtabError, match="failed"):
        down.setup(small)
    assert down.risks is None
