"""`trimtab resta`: fine-tuned + scale * (aligned - base), exactly, without touching inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from trimtab.errors import TrimtabError
from trimtab.recovery import RestaConfig, resta_checkpoint


def _tiny(seed: int, tokenizer, hidden: int = 16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                                        intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2))


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def folders(quick_refs, tmp_path_factory) -> dict[str, Path]:
    """Three small same-architecture models sharing the quick world's tokenizer."""
    from trimtab.training.run import load_tokenizer, save_model

    tok = load_tokenizer(quick_refs.aligned)
    root = tmp_path_factory.mktemp("resta")
    out = {}
    for seed, role in enumerate(("finetuned", "aligned", "base")):
        out[role] = save_model(_tiny(seed, tok), tok, root / role)
    return out


def test_cli_resta_is_exact_task_arithmetic(folders, tmp_path) -> None:
    from trimtab.cli import main
    from trimtab.training.run import load_model

    digests = {r: _digest(p) for r, p in folders.items()}
    out = tmp_path / "resta"
    code = main(["resta", "--finetuned", str(folders["finetuned"]), "--aligned",
                 str(folders["aligned"]), "--base", str(folders["base"]), "--scale", "0.5",
                 "--output-dir", str(out)])
    assert code == 0
    assert {r: _digest(p) for r, p in folders.items()} == digests
    models = {r: dict(load_model(p).named_parameters()) for r, p in folders.items()}
    result = dict(load_model(out).named_parameters())
    for name, w in result.items():
        expect = models["finetuned"][name] + 0.5 * (models["aligned"][name] - models["base"][name])
        torch.testing.assert_close(w, expect, rtol=0, atol=1e-6)
    assert json.loads((out / "resta_log.json").read_text())["scale"] == 0.5


def test_resta_scale_zero_gives_back_the_finetuned_weights(folders) -> None:
    from trimtab.training.run import load_model

    model, log = resta_checkpoint(folders["finetuned"], folders["aligned"], folders["base"],
                                  RestaConfig(scale=0.0))
    ft = dict(load_model(folders["finetuned"]).named_parameters())
    assert all(torch.equal(p, ft[n]) for n, p in model.named_parameters())
    assert log["safety_vector_norm"] > 0


def test_resta_rejects_a_base_of_another_shape(folders, quick_refs, tmp_path) -> None:
    from trimtab.training.run import load_tokenizer, save_model

    tok = load_tokenizer(quick_refs.aligned)
    wide = save_model(_tiny(5, tok, hidden=32), tok, tmp_path / "wide")
    with pytest.raises(TrimtabError, match="different architectures"):
        resta_checkpoint(folders["finetuned"], folders["aligned"], wide,
                         output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_resta_without_base_says_how(folders, tmp_path, capsys) -> None:
    from trimtab.cli import main

    code = main(["resta", "--finetuned", str(folders["finetuned"]), "--aligned",
                 str(folders["aligned"]), "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "--base" in capsys.readouterr().err


def test_cli_resta_refuses_an_infinite_scale_and_leaves_nothing(folders, tmp_path,
                                                                capsys) -> None:
    from trimtab.cli import main

    out = tmp_path / "inf"
    code = main(["resta", "--finetuned", str(folders["finetuned"]), "--aligned",
                 str(folders["aligned"]), "--base", str(folders["base"]), "--scale", "inf",
                 "--output-dir", str(out)])
    assert code == 2 and "not a finite number" in capsys.readouterr().err
    assert not out.exists()
