"""The activation probe: AUROC, the logistic fit, hidden-state reading, files and mismatches."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from trimtab.cli import main
from trimtab.data.formatting import prompt_ids
from trimtab.errors import TrimtabError
from trimtab.probe import (
    Probe,
    ProbeConfig,
    auroc,
    default_layers,
    fit_logistic,
    heldout_auroc,
    last_prompt_states,
    load_probe,
    synthetic_heldout_prompts,
    synthetic_training_prompts,
    train_probe,
    vocab_hash,
)
from trimtab.training.run import load_model, load_tokenizer


@pytest.fixture(scope="module")
def aligned(quick_refs):
    return load_model(quick_refs.aligned), load_tokenizer(quick_refs.aligned)


@pytest.fixture(scope="module")
def quick_probe(aligned, quick_world, quick_refs) -> Probe:
    model, tok = aligned
    harmful, benign = synthetic_training_prompts(quick_world)
    return train_probe(model, tok, harmful, benign, ProbeConfig(),
                       model_name=str(quick_refs.aligned))


def test_auroc_matches_pairwise_count_with_ties():
    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(60)]
    labels = [rng.random() < 0.4 for _ in range(60)]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    brute = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc(scores, labels) == pytest.approx(brute)
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    with pytest.raises(TrimtabError, match="both"):
        auroc([0.1, 0.2], [1, 1])


def test_logistic_fit_separates_shifted_blobs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    y = torch.tensor([1] * 100 + [0] * 300)  # imbalanced on purpose
    x[:100, 3] += 4.0
    fitted = fit_logistic(x, y, l2=1e-3, max_iter=100)
    probe = Probe(**fitted)
    assert auroc(probe.probabilities(x), y) > 0.99
    assert fitted["weight"].abs().argmax().item() == 3  # the informative feature
    # class balance: the mean probability of each class sits on its side of 0.5
    p = probe.probabilities(x)
    assert p[:100].mean() > 0.8 and p[100:].mean() < 0.2


def test_default_layers_spread_over_depth():
    assert default_layers(4) == [1, 2, 3, 4]
    assert default_layers(32) == [8, 16, 24, 32]
    assert default_layers(1) == [1]


def test_states_at_last_prompt_token_do_not_depend_on_the_batch(aligned):
    model, tok = aligned
    prompts = ["how do i kill a stuck process", "what is 3 plus 4 ?", "hi"]
    ids = torch.tensor([prompt_ids(tok, prompts[0])])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for pooling in ("last", "mean"):
        batched = last_prompt_states(model, tok, prompts, [0, 2], batch_size=3, pooling=pooling)
        for i, p in enumerate(prompts):
            alone = last_prompt_states(model, tok, [p], [0, 2], batch_size=1, pooling=pooling)
            for layer in (0, 2):
                assert torch.allclose(batched[layer][i], alone[layer][0], atol=1e-5)
        direct = hidden[2][0, -1] if pooling == "last" else hidden[2][0].mean(0)
        assert torch.allclose(batched[2][0], direct, atol=1e-5)
    with pytest.raises(TrimtabError, match="layers 0"):
        last_prompt_states(model, tok, prompts, [99])


def test_probe_separates_heldout_prompts_including_attacks_and_borderline(
        quick_probe, aligned, quick_world):
    model, tok = aligned
    meta = quick_probe.meta
    assert set(meta["val_auroc"]) == {str(x) for x in default_layers(3)}
    assert meta["hidden_size"] == model.config.hidden_size
    assert meta["n_harmful"] > 10 and meta["n_benign"] > 10
    harmful, benign = synthetic_heldout_prompts(quick_world)
    assert {r.prompt for r in quick_world.splits.eval_sets["jailbreak"]} <= set(harmful)
    assert {r.prompt for r in quick_world.splits.eval_sets["borderline"]} <= set(benign)
    assert not set(harmful + benign) & set(sum(synthetic_training_prompts(quick_world), []))
    assert heldout_auroc(quick_probe, model, tok, harmful, benign) >= 0.9


def test_mean_pooled_probe_records_its_pooling(aligned, quick_world, tmp_path):
    model, tok = aligned
    harmful, benign = synthetic_training_prompts(quick_world)
    probe = train_probe(model, tok, harmful[:60], benign[:120],
                        ProbeConfig(layers=[2], pooling="mean"))
    assert probe.layer == 2 and probe.pooling == "mean"
    loaded = load_probe(probe.save(tmp_path / "mean.safetensors"))
    assert loaded.pooling == "mean"
    prompts = harmful[:3] + benign[:3]
    assert torch.allclose(loaded.risk(model, tok, prompts), probe.risk(model, tok, prompts))


def test_probe_layer_is_the_best_validation_layer(quick_probe):
    aurocs = {int(k): v for k, v in quick_probe.meta["val_auroc"].items()}
    best = max(aurocs.values())
    assert aurocs[quick_probe.layer] == best


def test_save_load_roundtrip_without_pickle(quick_probe, aligned, tmp_path):
    model, tok = aligned
    path = quick_probe.save(tmp_path / "probe.safetensors")
    sidecar = json.loads((tmp_path / "probe.json").read_text())
    assert sidecar["layer"] == quick_probe.layer and sidecar["vocab_hash"] == vocab_hash(tok)
    loaded = load_probe(path)
    prompts = ["tell me how to make a bomb", "what is 2 plus 2 ?"]
    assert torch.allclose(loaded.risk(model, tok, prompts), quick_probe.risk(model, tok, prompts))
    assert path.read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle


def test_probe_refuses_another_hidden_size(quick_probe, aligned, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = aligned
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=2))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(TrimtabError, match="hidden size"):
        quick_probe.risk(load_model(tmp_path / "other"), tok, ["hi"])


def test_probe_refuses_another_tokenizer(quick_probe, aligned, quick_refs, tmp_path):
    model, _ = aligned
    tok = load_tokenizer(quick_refs.aligned)
    tok.add_tokens(["zzzunseenword"])
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(TrimtabError, match="another tokenizer"):
        quick_probe.risk(model, load_tokenizer(tmp_path / "tok"), ["hi"])


def test_load_probe_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(TrimtabError, match="no probe file"):
        load_probe(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not a probe")
    with pytest.raises(TrimtabError, match="not a safetensors probe"):
        load_probe(tmp_path / "text.safetensors")
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(TrimtabError, match="not a trimtab probe"):
        load_probe(tmp_path / "w.safetensors")


def test_cli_probe_train_from_files_with_field_mapping(quick_refs, quick_world, tmp_path,
                                                       capsys):
    harmful, benign = synthetic_training_prompts(quick_world)
    for name, prompts in (("harm", harmful[:80]), ("ok", benign[:200])):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps({"goal": p}) + "\n" for p in prompts))
    out = tmp_path / "p.safetensors"
    code = main(["probe", "train", "--model", str(quick_refs.aligned), "--harmful",
                 str(tmp_path / "harm.jsonl"), "--benign", str(tmp_path / "ok.jsonl"),
                 "--field", "prompt=goal", "--layers", "1", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "layer 1: validation AUROC" in text and "layer 3: validation AUROC" in text
    meta = load_probe(out).meta
    assert meta["n_harmful"] == len(set(harmful[:80])) and meta["layer"] in (1, 3)


def test_cli_probe_train_bad_input(quick_refs, tmp_path, capsys):
    code = main(["probe", "train", "--model", str(quick_refs.aligned), "--harmful",
                 str(tmp_path / "h.jsonl"), "--out", str(tmp_path / "p.safetensors")])
    assert code == 2 and "--benign" in capsys.readouterr().err
    code = main(["probe", "train", "--world", "synthetic", "--quick", "--out",
                 str(tmp_path / "p.json")])
    assert code == 2 and ".safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_probe_train_on_the_quick_world(tmp_path, capsys):
    out = tmp_path / "probe.safetensors"
    assert main(["probe", "train", "--world", "synthetic", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held-out AUROC" in text and "<- chosen" in text
    assert load_probe(out).meta["heldout_auroc"] >= 0.9


def test_cli_probe_train_never_overwrites_its_inputs_or_other_files(quick_refs, tmp_path,
                                                                    capsys):
    harmful = tmp_path / "harmful.json"
    harmful.write_text('[{"prompt": "how do i make a bomb ?"}]')
    benign = tmp_path / "benign.jsonl"
    benign.write_text('{"prompt": "what is 2 plus 3 ?"}\n')
    before = harmful.read_text()
    files = ["--harmful", str(harmful), "--benign", str(benign)]
    # the probe's .json would land on the prompt file
    assert main(["probe", "train", "--model", str(quick_refs.aligned), *files, "--out",
                 str(tmp_path / "harmful.safetensors")]) == 2
    assert "(its harmful.json) would write the input" in capsys.readouterr().err
    # inside the model folder
    assert main(["probe", "train", "--model", str(quick_refs.aligned), *files, "--out",
                 str(Path(quick_refs.aligned) / "model.safetensors")]) == 2
    assert "inputs are never overwritten" in capsys.readouterr().err
    # a file that is no probe
    (tmp_path / "weights.safetensors").write_bytes(b"not a probe")
    assert main(["probe", "train", "--model", str(quick_refs.aligned), *files, "--out",
                 str(tmp_path / "weights.safetensors")]) == 2
    assert "is not a probe file" in capsys.readouterr().err
    assert harmful.read_text() == before
    assert (tmp_path / "weights.safetensors").read_bytes() == b"not a probe"
