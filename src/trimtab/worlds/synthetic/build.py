"""Builds the synthetic world's two reference models into cached HF folders.

Stage 1 trains a tiny Llama from scratch into the unaligned **base**: capable on the general
tasks, it complies with harmful requests and makes up answers about unknown entities.
Stage 2 continues from the base into the **aligned reference**: the same general data, with
refusals for harmful requests (plain and wrapped in training attacks), help for borderline
requests and abstentions for unknown entities. Both stages run through the same trainer and
`sft` objective as every fine-tuning in trimtab. The folders are cached under a key of the
world and build configs, so they are rebuilt only when a config changes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trimtab.cache import cache_root, config_key
from trimtab.config import SEED_MAX, CheckedConfig, option
from trimtab.errors import TrimtabError
from trimtab.objectives.sft import SFTObjective
from trimtab.training.config import TrainConfig
from trimtab.training.run import finetune, load_model, save_model
from trimtab.worlds.synthetic.generator import SyntheticWorld, SyntheticWorldConfig
from trimtab.worlds.synthetic.tokenizer import build_word_tokenizer

BUILD_FORMAT = 2  # bump when the build procedure changes in a way configs do not capture


@dataclass
class ReferenceBuildConfig(CheckedConfig):
    """The tiny model and how long each stage trains."""

    hidden_size: int = option(128, "width of the tiny Llama", min=8)
    intermediate_size: int = option(384, "MLP width", min=8)
    num_hidden_layers: int = option(4, "transformer blocks", min=1)
    num_attention_heads: int = option(4, "attention heads", min=1)
    max_position_embeddings: int = option(128, "longest sequence the model handles", min=16)
    base_epochs: float = option(10.0, "epochs of stage 1 (base)", min=0.0)
    aligned_epochs: float = option(8.0, "epochs of stage 2 (aligned reference)", min=0.0)
    learning_rate: float = option(3e-3, "peak learning rate of both stages", min=0.0)
    batch_size: int = option(64, "sequences per step", min=1)
    seed: int = option(0, "seed of model init and data order", min=0, max=SEED_MAX)


@dataclass
class References:
    """Paths of a built world: `base` and `aligned` are HF model folders with tokenizers."""

    root: Path
    base: Path
    aligned: Path
    build_seconds: dict[str, float]


def _train_config(build: ReferenceBuildConfig, epochs: float, progress: bool) -> TrainConfig:
    return TrainConfig(learning_rate=build.learning_rate, num_train_epochs=epochs,
                       per_device_train_batch_size=build.batch_size, seed=build.seed,
                       max_length=build.max_position_embeddings, progress=progress,
                       logging_steps=50, warmup_ratio=0.02)


def reference_key(world: SyntheticWorld, build_config: ReferenceBuildConfig) -> str:
    """The cache key of a world's references.

    It covers the generated data itself, not only the configs, so a change to the
    generator's code also gives a fresh build instead of stale models.
    """
    from trimtab.worlds.synthetic.generator import key_fields

    return config_key("synthetic", BUILD_FORMAT, key_fields(world.config), asdict(build_config),
                      world.digest())


def build_references(world_config: SyntheticWorldConfig | None = None,
                     build_config: ReferenceBuildConfig | None = None, *,
                     cache_dir: Path | None = None, force: bool = False,
                     progress: bool = True) -> References:
    """Build (or load from the cache) the base and aligned models of a synthetic world."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    world_config = world_config or SyntheticWorldConfig()
    build_config = build_config or ReferenceBuildConfig()
    world = SyntheticWorld(world_config)
    key = reference_key(world, build_config)
    root = Path(cache_dir or cache_root()) / "synthetic" / key
    manifest = root / "build.json"
    if manifest.exists() and not force:
        try:
            info = json.loads(manifest.read_text())
            return References(root, root / "base", root / "aligned", info["build_seconds"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrimtabError(f"cannot create the cache folder {root.parent}: {err}. Set "
                           "TRIMTAB_CACHE to a writable folder.") from err

    tokenizer = build_word_tokenizer(world.texts())
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root.parent))
    try:
        set_seed(build_config.seed)
        b = build_config
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=b.hidden_size,
            intermediate_size=b.intermediate_size, num_hidden_layers=b.num_hidden_layers,
            num_attention_heads=b.num_attention_heads, num_key_value_heads=b.num_attention_heads,
            max_position_embeddings=b.max_position_embeddings, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        save_model(model, tokenizer, work / "init")
        seconds = {}
        start = time.perf_counter()
        base = finetune(work / "init", world.splits.base_train, SFTObjective(),
                        _train_config(b, b.base_epochs, progress), output_dir=work / "base")
        seconds["base"] = time.perf_counter() - start
        start = time.perf_counter()
        # Stage 2 keeps the word embeddings of stage 1 frozen: the unknown names used to
        # teach abstention and the held-out unknown names then look alike to the layers, so
        # abstention is learned as a rule ("not a known entity"), not as a list of names.
        aligned = load_model(work / "base")
        aligned.get_input_embeddings().weight.requires_grad_(False)
        finetune(work / "base", world.splits.aligned_train, SFTObjective(),
                 _train_config(b, b.aligned_epochs, progress), output_dir=work / "aligned",
                 model=aligned)
        aligned.get_input_embeddings().weight.requires_grad_(True)
        seconds["aligned"] = time.perf_counter() - start
        del base
        shutil.rmtree(work / "init")
        (work / "build.json").write_text(json.dumps({
            "world_config": asdict(world_config), "build_config": asdict(build_config),
            "build_format": BUILD_FORMAT, "build_seconds": seconds,
        }, indent=2))
        if manifest.exists() and not force:
            # Another process finished the same build meanwhile: keep its folder, which a
            # reader may already be using, and drop ours.
            shutil.rmtree(work)
            info = json.loads(manifest.read_text())
            return References(root, root / "base", root / "aligned", info["build_seconds"])
        if root.exists():
            shutil.rmtree(root)
        work.rename(root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return References(root, root / "base", root / "aligned", seconds)
