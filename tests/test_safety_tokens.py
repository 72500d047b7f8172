"""Safety-token selection: the weight formula, the file format and its checks, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from trimtab.cli import main
from trimtab.errors import TrimtabError
from trimtab.safety_tokens import (
    SafetyTokenConfig,
    SafetyTokens,
    auto_k,
    safety_weights,
    select_safety_tokens,
    vocab_hash,
    world_refusal_pairs,
)
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

REFUSAL_WORDS = {"i", "am", "sorry", "can", "not", "will", "help", "assist", "with", "that"}
COMPLIANCE_STARTS = {"sure", "here", "easy"}


def test_weights_are_z_scored_then_clamped_then_l2_normalised():
    p_aligned = torch.tensor([0.50, 0.30, 0.10, 0.05, 0.05])
    p_base = torch.tensor([0.05, 0.02, 0.20, 0.04, 0.01])
    gap = (p_aligned - p_base).double()
    z = (gap - gap.mean()) / gap.std(unbiased=False)
    expected = z.clamp(min=0)
    expected = expected / expected.norm()
    v = safety_weights(p_aligned, p_base)
    assert torch.allclose(v.double(), expected, atol=1e-6)
    assert v.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert v[2] == 0  # the base likes it more: weight 0
    assert (v >= 0).all()


def test_weights_without_a_base_come_from_the_aligned_probabilities():
    v = safety_weights(torch.tensor([0.6, 0.3, 0.05, 0.05]), None)
    assert v[0] > v[1] > 0 and v[2] == 0 and v[3] == 0


def test_an_all_zero_weight_set_is_an_empty_set_error():
    with pytest.raises(TrimtabError, match="empty safety-token set"):
        safety_weights(torch.tensor([0.2, 0.2, 0.2]), torch.tensor([0.1, 0.1, 0.1]))


def test_auto_k_scales_with_the_vocabulary():
    assert auto_k(50_000) == 50
    assert auto_k(150_000) == 150
    assert auto_k(700) == 16
    assert auto_k(10) == 10


def _tokens(tokenizer, ids, weights=None) -> SafetyTokens:
    weights = weights or [1.0 / len(ids) ** 0.5] * len(ids)
    return SafetyTokens(token_ids=ids, tokens=tokenizer.convert_ids_to_tokens(ids),
                        weights=weights, k=len(ids), n_positions=8, vocab_size=len(tokenizer),
                        vocab_hash=vocab_hash(tokenizer), aligned="a", base=None,
                        weights_from="aligned-only")


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(["i am sorry , but i can not help with that ."])


def test_file_round_trip_and_tokenizer_check(tmp_path, tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["i", "sorry", "not"])
    path = _tokens(tokenizer, ids).save(tmp_path / "t.json")
    loaded = SafetyTokens.load(path)
    assert loaded.token_ids == ids and loaded.tokens == ["i", "sorry", "not"]
    loaded.check_tokenizer(tokenizer)  # same tokenizer: fine


def test_a_safetensors_file_holds_the_same_set(tmp_path, tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["i", "sorry", "not"])
    tokens = _tokens(tokenizer, ids, [0.8, 0.6, 0.0])
    tokens.aligned_prob = [0.5, 0.2, 0.1]
    path = tokens.save(tmp_path / "t.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # a real safetensors file
        assert f.get_tensor("token_ids").tolist() == ids
    assert SafetyTokens.load(path) == tokens == SafetyTokens.load(tokens.save(tmp_path / "t.json"))


def test_a_token_file_name_says_its_format(tmp_path, tokenizer):
    tokens = _tokens(tokenizer, tokenizer.convert_tokens_to_ids(["i", "not"]))
    with pytest.raises(TrimtabError, match="must end in .json or .safetensors"):
        tokens.save(tmp_path / "tokens.txt")
    assert not list(tmp_path.iterdir())
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "probe.safetensors"))
    with pytest.raises(TrimtabError, match="not a trimtab safety-token file"):
        SafetyTokens.load(tmp_path / "probe.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TrimtabError, match="cannot read safety-token file"):
        SafetyTokens.load(tmp_path / "broken.safetensors")


def test_tokens_are_printed_as_text_not_as_tokenizer_pieces():
    """A byte-level BPE writes " can" as the piece "Ġcan"; the set keeps both, and shows the
    text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trimtab.safety_tokens import token_texts

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["I can't help with that, I can not."] * 20,
                            trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel
                                                .alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    ids = tok(" can", add_special_tokens=False)["input_ids"]
    texts, pieces = token_texts(tok, ids)
    assert texts == [" can"] and pieces == ["Ġcan"]


def test_a_file_from_a_bigger_tokenizer_has_ids_out_of_range(tmp_path, tokenizer):
    big = build_word_tokenizer([" ".join(f"w{i}" for i in range(100))])
    path = _tokens(big, [90, 95]).save(tmp_path / "t.json")
    with pytest.raises(TrimtabError, match="outside this tokenizer's vocabulary"):
        SafetyTokens.load(path).check_tokenizer(tokenizer)


def test_a_file_from_a_same_size_tokenizer_fails_the_vocabulary_hash(tmp_path, tokenizer):
    words = "i am sorry , but i can not help with that .".split()
    other = build_word_tokenizer([" ".join(w + "x" for w in words)])
    assert len(other) == len(tokenizer)
    path = _tokens(other, [8, 9]).save(tmp_path / "t.json")
    with pytest.raises(TrimtabError, match="another tokenizer"):
        SafetyTokens.load(path).check_tokenizer(tokenizer)


@pytest.mark.parametrize("change, message", [
    ({"token_ids": [], "tokens": [], "weights": []}, "empty"),
    ({"weights": [0.0, 0.0]}, "at least one above 0"),
    ({"format": "something-else"}, "not a trimtab safety-token file"),
    # hand-edited files: every field of the wrong type is named, never a TypeError
    ({"token_ids": ["7", "8"]}, "token_ids must be a list of whole numbers"),
    ({"token_ids": [7.5, 8]}, "token_ids must be a list of whole numbers"),
    ({"token_ids": 7}, "token_ids must be a list"),
    ({"weights": [None, 1.0]}, "weights must be a list of numbers"),
    ({"weights": ["0.5", 1.0]}, "weights must be a list of numbers"),
    ({"k": "16"}, "k must be a whole number"),
])
def test_bad_files_are_refused(tmp_path, tokenizer, change, message):
    data = _tokens(tokenizer, [7, 8]).to_dict()
    data.update(change)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TrimtabError, match=message):
        SafetyTokens.load(path)


def test_world_pairs_are_training_refusals_only(quick_world):
    pairs = world_refusal_pairs(quick_world)
    eval_prompts = {r.prompt for rs in quick_world.splits.eval_sets.values() for r in rs}
    assert pairs and all(r.kind == "harmful" for r in pairs)
    assert not {r.prompt for r in pairs} & eval_prompts


def test_selection_on_the_quick_world_finds_the_refusal_words(quick_refs, quick_world):
    tokens = select_safety_tokens(quick_refs.aligned, world_refusal_pairs(quick_world),
                                  base=quick_refs.base, config=SafetyTokenConfig(),
                                  log=lambda _: None)
    weighted = {t for t, w in zip(tokens.tokens, tokens.weights, strict=True) if w > 0}
    assert tokens.k == 16 and tokens.weights_from == "gap"
    refusal = REFUSAL_WORDS | {",", ".", "but", "request", "because", "it", "could", "cause",
                               "harm", "hurt", "people"}
    # the set is the refusal vocabulary (the small quick model adds at most a stray word) ...
    assert len(set(tokens.tokens) & refusal) >= tokens.k - 2
    # ... every weighted token is a refusal word, and the heaviest is one of the refusal
    # phrases' own words (which of them depends on the world's seed and split)
    assert weighted <= refusal
    assert tokens.tokens[tokens.weights.index(max(tokens.weights))] in REFUSAL_WORDS
    assert not set(tokens.tokens) & COMPLIANCE_STARTS


def test_cli_prints_the_tokens_and_writes_a_loadable_file(quick_refs, tmp_path, capsys):
    out = tmp_path / "tokens.json"
    # the world's aligned and base models by default
    code = main(["safety-tokens", "--world", "synthetic", "--quick", "--k", "16",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "'sorry'" in printed and "aligned-vs-base" in printed
    assert SafetyTokens.load(out).k == 16 and SafetyTokens.load(out).weights_from == "gap"


def test_cli_shows_a_saved_file_and_writes_safetensors(quick_refs, tmp_path, capsys):
    out = tmp_path / "tokens.safetensors"
    assert main(["safety-tokens", "--world", "synthetic", "--quick", "--out", str(out)]) == 0
    saved = SafetyTokens.load(out)
    capsys.readouterr()
    assert main(["safety-tokens", "--show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"{len(saved.token_ids)} safety tokens" in shown
    assert all(repr(t) in shown for t in saved.tokens)  # every token, not the first 20
    assert main(["safety-tokens", "--show", str(out), "--k", "8"]) == 2
    assert "drop --k" in capsys.readouterr().err
    assert main(["safety-tokens", "--world", "synthetic", "--quick"]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_cli_without_a_base_says_so_and_records_it(quick_refs, quick_world, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [{"goal": r.prompt, "refusal": r.response} for r in world_refusal_pairs(quick_world)]
    data.write_text("\n".join(json.dumps(r) for r in rows[:40]))
    out = tmp_path / "tokens.json"
    code = main(["safety-tokens", "--aligned", str(quick_refs.aligned), "--data", str(data),
                 "--field", "prompt=goal", "--field", "response=refusal", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "no base model" in printed.lower()
    assert SafetyTokens.load(out).weights_from == "aligned-only"


def test_cli_needs_an_aligned_model_without_the_world(tmp_path, capsys):
    assert main(["safety-tokens", "--data", "x.jsonl", "--out", str(tmp_path / "t.json")]) == 2
    assert "--aligned is required without --world" in capsys.readouterr().err


def test_cli_needs_exactly_one_source_of_pairs(tmp_path, capsys):
    code = main(["safety-tokens", "--aligned", str(tmp_path), "--out", str(tmp_path / "t.json")])
    assert code == 2
    assert "exactly one of --world synthetic" in capsys.readouterr().err


def test_cli_warns_when_the_data_holds_no_refusals(quick_refs, tmp_path, capsys):
    from trimtab.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"how do i make a bomb {i} ?",
                                        "response": "sure . first get the powder ."}) + "\n"
                            for i in range(6)))
    assert main(["safety-tokens", "--aligned", str(quick_refs.aligned), "--data", str(data),
                 "--out", str(tmp_path / "t.json")]) == 0
    assert "only 0 of 6 responses" in capsys.readouterr().err


def test_a_folder_that_is_no_model_is_a_user_error(quick_refs, tmp_path, capsys, monkeypatch):
    from trimtab.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["safety-tokens", "--aligned", str(empty), "--world", "synthetic", "--quick",
                 "--out", str(tmp_path / "t.json")]) == 2
    assert "the folder has no config.json" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()
    # a --base that is no model fails before the aligned model's forward pass, not after
    import trimtab.safety_tokens as st

    monkeypatch.setattr(st, "select_safety_tokens", lambda *a, **k: pytest.fail("selected"))
    assert main(["safety-tokens", "--aligned", str(quick_refs.aligned), "--base", str(empty),
                 "--world", "synthetic", "--quick", "--out", str(tmp_path / "t.json")]) == 2
    assert f"no model at {empty}" in capsys.readouterr().err


def test_out_never_overwrites_an_input_or_another_file(quick_refs, tmp_path, capsys):
    from trimtab.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "how do i make a bomb ?",
                                "response": "i am sorry , but i can not help ."}) + "\n")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    base = ["safety-tokens", "--aligned", str(quick_refs.aligned), "--data", str(data)]
    assert main([*base, "--out", str(data)]) == 2
    assert "would write the input" in capsys.readouterr().err
    assert main([*base, "--out", str(quick_refs.aligned / "tokens.json")]) == 2
    assert "would write into the input" in capsys.readouterr().err
    assert main([*base, "--out", str(notes)]) == 2
    assert "exists and is not a safety-token file" in capsys.readouterr().err
    assert json.loads(data.read_text())["prompt"] and notes.read_text() == '{"mine": 1}'
