"""Loading the checkpoints a post-hoc step combines, and checking they can be combined.

Every check here runs before any gradient or generation work: two models with different
architectures, shapes or tokenizers cannot be mixed weight by weight, and finding that out
after minutes of work (or never, with silently broadcast tensors) is the failure to avoid.
LoRA adapter folders are merged into their base first, so every step sees plain weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trimtab.errors import TrimtabError

# Config fields that fix every weight's shape; two models that differ in one cannot be mixed.
SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "tie_word_embeddings")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_adapter(path: str | os.PathLike) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def adapter_base(path: str | os.PathLike) -> str | None:
    """The base model an adapter folder loads (None: not an adapter, or it names none)."""
    if not is_adapter(path):
        return None
    adapter = json.loads((Path(path) / "adapter_config.json").read_text())
    return adapter.get("base_model_name_or_path") or None


def _model_config(path: str | os.PathLike) -> Any:
    """The HF config of a model folder, or of the base an adapter folder was trained on."""
    from transformers import AutoConfig

    source: str | Path = Path(path)
    if is_adapter(source):
        source = adapter_base(source) or ""
        if not source:
            raise TrimtabError(f"the adapter at {path} names no base model "
                               "(base_model_name_or_path); merge it yourself and pass the folder.")
    try:
        return AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as err:
        raise TrimtabError(f"cannot read a model config from {source}: {err}. Pass a folder "
                           "written by save_pretrained (config.json + safetensors).") from err


def _load_tokenizer(path: str | os.PathLike) -> Any:
    from trimtab.training.run import load_tokenizer

    return load_tokenizer(path)


def check_compatible(paths: dict[str, str | os.PathLike]) -> dict[str, Any]:
    """Compare configs and tokenizers of named checkpoints; return the tokenizers by name.

    Cheap (no weights are read), so it runs before anything else.
    """
    for role, path in paths.items():
        if not Path(path).exists():
            raise TrimtabError(f"--{role} {path} does not exist; pass a model folder.")
    configs = {role: _model_config(path) for role, path in paths.items()}
    first, ref = next(iter(configs.items()))
    for role, cfg in configs.items():
        for key in SHAPE_FIELDS:
            a, b = getattr(configs[first], key, None), getattr(cfg, key, None)
            if a != b:
                raise TrimtabError(
                    f"--{first} and --{role} have different architectures ({key}: {a} vs {b}); "
                    "a post-hoc step mixes weights one by one, so pass checkpoints of the same "
                    "model (fine-tuned from the aligned one)."
                )
    del ref
    tokenizers = {role: _load_tokenizer(path) for role, path in paths.items()}
    ref_tok = tokenizers[first]
    for role, tok in tokenizers.items():
        problem = _tokenizer_difference(ref_tok, tok)
        if problem:
            raise TrimtabError(
                f"--{first} and --{role} have different tokenizers ({problem}); the directions "
                "and task scores compare token by token, so pass checkpoints that share one."
            )
    return tokenizers


def _tokenizer_difference(a: Any, b: Any) -> str | None:
    if a.get_vocab() != b.get_vocab():
        return f"vocabularies of {len(a)} and {len(b)} tokens differ"
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(a, attr) != getattr(b, attr):
            return f"{attr} {getattr(a, attr)} vs {getattr(b, attr)}"
    if getattr(a, "chat_template", None) != getattr(b, "chat_template", None):
        return "chat templates differ"
    return None


def load_merged(path: str | os.PathLike, dtype: str = "float32") -> Any:
    """A causal LM from a model folder, or an adapter folder merged into its base."""
    from transformers import AutoModelForCausalLM

    torch_dtype = DTYPES[dtype]
    try:
        if is_adapter(path):
            from peft import AutoPeftModelForCausalLM

            peft_model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
            model = peft_model.merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    except OSError as err:
        raise TrimtabError(f"cannot load a causal LM from {path}: {err}. Pass a folder written "
                           "by save_pretrained or a PEFT adapter folder.") from err
    model.eval()
    model.requires_grad_(False)
    return model


def check_same_weights(models: dict[str, Any]) -> None:
    """Same parameter names and shapes in every model (after any LoRA merge)."""
    first, ref = next(iter(models.items()))
    shapes = {n: tuple(p.shape) for n, p in ref.named_parameters()}
    for role, model in models.items():
        other = {n: tuple(p.shape) for n, p in model.named_parameters()}
        if other == shapes:
            continue
        missing = sorted(set(shapes) ^ set(other))
        detail = (f"parameter {missing[0]} is in only one of them" if missing else next(
            f"{n}: {shapes[n]} vs {other[n]}" for n in shapes if shapes[n] != other[n]))
        raise TrimtabError(f"--{first} and --{role} have different weights ({detail}); pass "
                           "checkpoints of the same architecture.")


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The model's list of transformer blocks (`model.layers` in Llama-style models)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise TrimtabError("cannot find the model's list of transformer blocks (a ModuleList of "
                       "num_hidden_layers modules); this architecture is not supported.")


def resolve_layer(layer: int | None, fraction: float, n_layers: int) -> int:
    """L in 1..n_layers: `layer` if given, else round(fraction * depth)."""
    chosen = layer if layer is not None else max(1, round(fraction * n_layers))
    if not 1 <= chosen <= n_layers:
        raise TrimtabError(f"layer {chosen} is outside 1..{n_layers} (this model's depth); "
                           "pass --layer within it.")
    return chosen


def eligible_parameters(model: Any, layer: int) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """Weights of blocks 0..layer-1 (the ones that shape the hidden state at `layer`), but
    not their norms: restoring a norm rescales a whole layer at once."""
    blocks = decoder_layers(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for block in list(blocks)[:layer]:
        for module in block.modules():
            if "norm" in type(module).__name__.lower():
                continue
            for param in module.parameters(recurse=False):
                yield names[id(param)], param
