"""Fine-tune a model with any objective: load, format, train, time, save.

This is the one entry point that the CLI, the demo, the reference builder and the benchmark
call, so every method is trained the same way and differs only in its objective.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trimtab.data.collator import CausalCollator
from trimtab.data.formatting import ChatFormatter
from trimtab.data.records import Record
from trimtab.errors import TrimtabError
from trimtab.objectives.base import Objective, TrainingContext
from trimtab.training.checkpoints import (
    checkpoint_dir,
    prepare_checkpoints,
    run_fingerprint,
    setting_defaults,
)
from trimtab.training.config import TrainConfig
from trimtab.training.memory import PeakMemory
from trimtab.training.processes import process_count
from trimtab.training.reference import Reference
from trimtab.training.scratch import scratch_folder
from trimtab.training.trainer import AlignmentTrainer


@dataclass
class FinetuneResult:
    model: Any
    tokenizer: Any
    train_seconds: float
    peak_memory_mb: float
    train_tokens: int
    log_history: list[dict[str, Any]] = field(default_factory=list)
    skipped_batches: int = 0  # batches skipped for a NaN/inf loss (on_nonfinite_loss=skip)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else 0.0


# a folder holding one of these is a model or adapter save; with the tokenizer's, any save
MODEL_FILES = ("config.json", "adapter_config.json")
MODEL_MARKERS = (*MODEL_FILES, "tokenizer_config.json", "tokenizer.json")


def check_model_path(path: str | os.PathLike) -> None:
    """A model path that names no local folder but clearly is a local path ("./m", "out/m"
    when ./out exists) is a typo: say so now, not after a minute of retrying the Hub with it
    as a repository name. A hub name ("org/name", "gpt2") passes."""
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        if not any((local / name).is_file() for name in MODEL_MARKERS):
            raise TrimtabError(f"no model at {text}: the folder has no config.json (nor an "
                               "adapter or tokenizer config), so it is not a save_pretrained "
                               "folder. Check the path.")
        return
    if local.exists():
        return
    parent = local.parent
    if (text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
            or (text.count("/") == 1 and parent.is_dir())):
        raise TrimtabError(f"no model folder at {text}: the path does not exist. Check the "
                           "path (`trimtab world build` prints the synthetic models' folders).")


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    check_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # ValueError: a folder with no tokenizer files
        raise TrimtabError(
            f"cannot load a tokenizer from {path}: {str(err).rstrip('.')}. Pass a folder "
            "written by save_pretrained (or a hub name when online)."
        ) from err
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise TrimtabError(
                f"the tokenizer at {path} has neither a pad nor an eos token; set one "
                "(`tokenizer.pad_token = ...`) and save it again."
            )
        tok.pad_token = tok.eos_token
    return tok


def compute_device() -> torch.device:
    """Where setup-time forwards (caches, probes, token selection) run: this process's GPU when
    there is one (`LOCAL_RANK` under a multi-GPU launch), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def load_model(path: str | os.PathLike, config: TrainConfig | None = None, *,
               frozen: bool = False) -> Any:
    """A causal LM from a folder or hub name.

    The policy always gets fp32 weights (with `bf16` the Trainer autocasts, keeping fp32
    master weights for AdamW); only a `frozen` reference is loaded directly in bf16.
    """
    from transformers import AutoModelForCausalLM

    config = config or TrainConfig()
    dtype = torch.bfloat16 if (config.bf16 and frozen) else torch.float32
    check_model_path(path)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:  # ValueError: no or an unknown model config
        raise TrimtabError(
            f"cannot load a causal LM from {path}: {str(err).rstrip('.')}. Pass a folder "
            "written by save_pretrained (config.json + safetensors weights) or a hub name "
            "when online."
        ) from err


def apply_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [m for m in config.lora_target_modules if m in names]
    if not targets:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear | Conv1D)} - {"lm_head"})
        raise TrimtabError(
            f"none of lora_target_modules {config.lora_target_modules} exist in this model; "
            f"pick from its linear layers: {', '.join(linear[:12])}."
        )
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def sharded_weights() -> str | None:
    """"FSDP" or "DeepSpeed ZeRO-3" when `accelerate launch` shards the weights, else None."""
    env = os.environ
    if (env.get("ACCELERATE_USE_FSDP", "").lower() == "true"
            and env.get("FSDP_SHARDING_STRATEGY", "").upper() not in ("NO_SHARD", "3")):
        return "FSDP"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return None
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if stage is None and env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):  # a DeepSpeed JSON file
        try:
            ds = json.loads(Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).read_text())
            stage = str(ds.get("zero_optimization", {}).get("stage"))
        except (OSError, ValueError, AttributeError):
            stage = None
    return "DeepSpeed ZeRO-3" if stage == "3" else None


def check_sharding(objective: Objective) -> None:
    """Refuse, before any step, an objective that generates from the policy (`gated`) under
    sharded weights: it samples with the unwrapped model, outside the wrapper's forward,
    where FSDP and ZeRO-3 leave the parameters sharded. (A LoRA reference then becomes a
    frozen copy instead of the adapter-off policy, for the same reason.)"""
    sharding = sharded_weights()
    if sharding is not None and objective.samples_from_policy:
        raise TrimtabError(
            f"{objective.name} samples from the policy outside the wrapper's forward, where "
            f"{sharding} leaves the weights sharded. Launch it with DDP (--multi_gpu) or "
            "DeepSpeed ZeRO-1/2.")


def same_model(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two model paths (or hub names) name the same weights."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


def finetune(
    model_path: str | os.PathLike,
    records: Sequence[Record],
    objective: Objective,
    config: TrainConfig | None = None,
    *,
    reference_path: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    model: Any | None = None,
    base_path: str | os.PathLike | None = None,
    world: Any | None = None,
    callbacks: Sequence[Any] = (),
) -> FinetuneResult:
    """Train `model_path` (or an already loaded `model`) on `records` with `objective`.

    The reference, when the objective needs one, is a frozen copy loaded from
    `reference_path` (default: the starting model); under LoRA with no other reference it is
    the policy with its adapter disabled, the same weights without a second copy.
    `base_path` and `world` reach the objective's `setup` (see `TrainingContext`).
    With `output_dir` and `config.save_steps`, checkpoints go to `OUTPUT_DIR.checkpoints`;
    a killed run started again with the same arguments continues from the newest complete
    one (`config.resume`), and the folder is removed once the model is saved. `callbacks`
    are `transformers.TrainerCallback`s added to the trainer.
    With `output_dir` the result is saved there as a standard HF folder (adapter folder for
    LoRA), written to a temporary folder first and renamed, so a crash leaves nothing
    half-written behind.
    """
    from transformers import set_seed

    config = config or TrainConfig()
    config.check_trains()
    if output_dir is not None:  # never onto an input: a model, or a judge or file the method reads
        inputs = objective.input_files()
        check_output_dir(output_dir, model_path, reference_path, base_path, *inputs)
        check_outside_judges(output_dir, inputs)
    tokenizer = load_tokenizer(model_path, config.trust_remote_code)
    features = ChatFormatter(tokenizer, config.max_length, config.on_overflow).encode_all(records)
    # refusals that need no model come before the setup's minutes of scoring and caching
    check_sharding(objective)
    checkpoints = checkpoint_dir(output_dir) if (output_dir and config.save_steps) else None
    resume_from = None
    if checkpoints is not None:
        fingerprint = run_fingerprint(model_path, reference_path, base_path, objective, config,
                                      features)
        resume_from = prepare_checkpoints(checkpoints, fingerprint, config.resume,
                                          setting_defaults(objective))
    from trimtab.cache import artifacts_root

    objective.setup(TrainingContext(
        records=records, tokenizer=tokenizer, model_path=Path(model_path),
        reference_path=Path(reference_path or model_path), train_config=config,
        base_path=Path(base_path) if base_path is not None else None, world=world,
        artifacts_dir=artifacts_root(),
    ))
    set_seed(config.seed)
    if model is None:
        model = load_model(model_path, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config.lora:
        model = apply_lora(model, config)
    reference = None
    if objective.needs_reference:
        # the adapter-off policy runs outside the wrapper's forward: whole weights only
        if (config.lora and same_model(reference_path or model_path, model_path)
                and not sharded_weights()):
            reference = Reference(model)  # the adapter disabled: no second copy
        else:
            frozen = load_model(reference_path or model_path, config, frozen=True)
            reference = Reference(model, frozen)
    # the Trainer needs a folder: the checkpoints' when there are any, else a scratch one
    trainer_dir = (contextlib.nullcontext(str(checkpoints)) if checkpoints is not None
                   else scratch_folder())
    with trainer_dir as trainer_folder:
        world_size = process_count()
        args = config.training_arguments(trainer_folder, len(features), world_size)
        trainer = AlignmentTrainer(
            model=model,
            args=args,
            train_dataset=features,
            data_collator=CausalCollator(tokenizer.pad_token_id),
            objective=objective,
            reference=reference,
            on_nonfinite_loss=config.on_nonfinite_loss,
            callbacks=list(callbacks) or None,
        )
        if not config.progress:  # quiet: the logs still go to trainer.state.log_history
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        if reference is not None and reference.frozen is not None:
            reference.frozen.to(trainer.args.device)
        with PeakMemory() as memory:
            start = time.perf_counter()
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            seconds = time.perf_counter() - start
    epochs = args.num_train_epochs if config.max_steps <= 0 else 0
    tokens = sum(len(f["input_ids"]) for f in features)
    if config.max_steps > 0:
        per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
        tokens = int(tokens / len(features) * per_step * config.max_steps)
    else:
        tokens = int(tokens * epochs)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    trained.eval()
    result = FinetuneResult(trained, tokenizer, seconds, memory.peak_mb, tokens,
                            list(trainer.state.log_history), trainer.skipped_batches)
    if trainer.skipped_batches:
        import warnings

        warnings.warn(f"{trainer.skipped_batches} batches were skipped for a NaN/inf loss "
                      "(on_nonfinite_loss=skip).", stacklevel=2)
    if output_dir is not None:
        if trainer.accelerator.is_main_process:
            save_model(trained, tokenizer, output_dir)
            if checkpoints is not None:
                import shutil

                shutil.rmtree(checkpoints, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
    return result


# What `save_pretrained` (model, PEFT adapter, tokenizer), trimtab's post-hoc logs and
# `trimtab evaluate --out MODEL/metrics.json` write: a folder holding only these is a previous
# output and may be replaced as a whole (its metrics describe the model being replaced).
SAVED_FILES = re.compile(
    r"(config|generation_config|adapter_config|tokenizer|tokenizer_config|special_tokens_map"
    r"|added_tokens|vocab|chat_template|recover_log|resta_log|metrics)\.json"
    r"|(model|adapter_model)(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
    r"|(pytorch_model|adapter_model).*\.bin"
    r"|tokenizer\.model|vocab\.txt|merges\.txt|chat_template\.jinja|README\.md"
)


def written_by_save(path: Path) -> bool:
    """Whether `path` is a file a model save writes. A README.md counts only as the model
    card PEFT writes (`library_name: peft` in its front matter), not as the user's own."""
    if not (path.is_file() and SAVED_FILES.fullmatch(path.name)):
        return False
    if path.name == "README.md":  # PEFT's card: YAML front matter naming the library
        with path.open(errors="replace") as f:
            head = f.read(2000)
        front = head.split("---")[1] if head.startswith("---") and head.count("---") > 1 else ""
        return "library_name: peft" in front
    return True


def check_output_dir(output_dir: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output folder that is one of the input models or holds anything but a
    previous model folder: replacing it would delete the user's own files."""
    out = Path(output_dir).resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve() == out:
            raise TrimtabError(
                f"--output-dir {output_dir} is the input model folder or another input of this "
                f"run ({given}: a judge or file the method reads); inputs are never "
                "overwritten. Choose another folder."
            )
    if (out.parent / "build.json").is_file() and out.name in ("base", "aligned"):
        raise TrimtabError(f"--output-dir {output_dir} is a cached reference model of the "
                           "synthetic world, which later runs and `trimtab doctor` trust; "
                           "choose another folder.")
    if out.exists() and not out.is_dir():
        raise TrimtabError(f"--output-dir {output_dir} is a file; give a folder name.")
    existing = next((p for p in out.parents if p.exists()), None)
    if not out.exists() and existing is not None and not existing.is_dir():
        raise TrimtabError(f"--output-dir {output_dir} lies under {existing}, which is a file; "
                           "choose another folder.")
    if out.exists() and any(out.iterdir()):
        if not any((out / name).exists() for name in MODEL_FILES):
            raise TrimtabError(
                f"--output-dir {output_dir} exists and is not a model folder; choose an empty "
                "or new folder (a previous trimtab output folder is replaced)."
            )
        foreign = sorted(p.name for p in out.iterdir() if not written_by_save(p))
        if foreign:
            raise TrimtabError(
                f"--output-dir {output_dir} holds a model and also files a model save does not "
                f"write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                "replacing the folder would delete them. Move them, or choose another folder."
            )
    return out


def check_outside_judges(output_dir: str | os.PathLike, inputs: Sequence[str]) -> None:
    """Refuse an output folder inside a folder the method reads (a judge's): the run would
    write its model and checkpoints into the judge, and since a judge folder is hashed whole
    for the checkpoints, its own checkpoints would make every resume look like a new judge."""
    out = Path(output_dir).resolve()
    for given in inputs:
        folder = Path(given).resolve()
        if folder.is_dir() and folder in out.parents:
            raise TrimtabError(
                f"--output-dir {output_dir} lies inside {given}, a judge folder the method "
                "reads; the run would write into the judge. Choose a folder outside it.")


def save_model(model: Any, tokenizer: Any, output_dir: str | os.PathLike) -> Path:
    """Save model + tokenizer atomically: into a sibling temp folder, then rename.

    An existing model folder is replaced only once the new one is complete; if the final
    rename fails, the old folder is put back.
    """
    out = check_output_dir(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            import shutil

            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            try:
                tmp.rename(out)
            except OSError:
                old.rename(out)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
