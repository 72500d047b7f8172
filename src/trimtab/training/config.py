"""Training hyper-parameters shared by every objective; mapped onto `TrainingArguments`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trimtab.config import SEED_MAX, CheckedConfig, check_config, option


@dataclass
class TrainConfig(CheckedConfig):
    """How to train (any objective). Objective-specific knobs live in each objective's config."""

    # --- optimisation
    learning_rate: float = option(5e-4, "peak learning rate of AdamW", min=0.0)
    num_train_epochs: float = option(3.0, "passes over the training set", min=0.0)
    max_steps: int = option(-1, "if > 0, stop after this many optimiser steps (overrides epochs)")
    per_device_train_batch_size: int = option(32, "sequences per device per step", min=1)
    gradient_accumulation_steps: int = option(1, "micro-batches per optimiser step", min=1)
    warmup_ratio: float = option(0.05, "fraction of steps with a linear learning-rate warm-up",
                                 min=0.0, max=1.0)
    lr_scheduler_type: str = option("cosine", "learning-rate schedule after warm-up",
                                    choices=("cosine", "linear", "constant",
                                             "constant_with_warmup"))
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 disables clipping)", min=0.0)
    seed: int = option(0, "seed for model init, LoRA init and data order", min=0, max=SEED_MAX)
    on_nonfinite_loss: str = option("error", "a NaN/inf loss stops training with its step and "
                                             "terms ('error') or skips the batch ('skip')",
                                    choices=("error", "skip"))
    # --- data
    max_length: int = option(128, "longest tokenized conversation (prompt + response)", min=8)
    on_overflow: str = option("error", "what to do with a longer record",
                              choices=("error", "truncate", "drop"))
    # --- model
    lora: bool = option(False, "train a LoRA adapter instead of all weights (reference = "
                               "adapter disabled, no second copy, unless another "
                               "reference is given)")
    lora_r: int = option(16, "LoRA rank", min=1)
    lora_alpha: int = option(32, "LoRA scaling numerator", min=1)
    lora_dropout: float = option(0.0, "dropout inside LoRA layers", min=0.0, max=1.0)
    lora_target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "module names that receive LoRA adapters",
    )
    bf16: bool = option(False, "bf16 mixed precision (GPUs that support it)")
    gradient_checkpointing: bool = option(False, "recompute activations to save memory")
    trust_remote_code: bool = option(False, "run model code shipped with the checkpoint (only "
                                            "for models you trust)")
    # --- checkpoints
    save_steps: int = option(0, "save a resumable checkpoint every N steps into "
                                "OUTPUT_DIR.checkpoints (0: none; removed once the model is saved)",
                             min=0)
    resume: bool = option(True, "continue from the newest complete checkpoint in "
                                "OUTPUT_DIR.checkpoints when one exists (only one of this same "
                                "run; false: start over, clearing them)")
    # --- logging
    logging_steps: int = option(10, "log the loss and the objective's diagnostics every N steps",
                                min=1)
    progress: bool = option(True, "show a progress bar")

    def check_trains(self) -> None:
        """Refuse out-of-range settings (a TrainConfig built in Python skips the parser's
        checks) and settings that train nothing (0 epochs and no max_steps): a saved copy of
        the input model is no result."""
        from trimtab.errors import TrimtabError

        check_config(self, "training config")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise TrimtabError("num_train_epochs is 0 and max_steps is not set: nothing would "
                               "be trained. Give num_train_epochs above 0, or max_steps.")

    def total_steps(self, n_examples: int, world_size: int = 1) -> int:
        if self.max_steps > 0:
            return self.max_steps
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps * world_size
        return max(1, math.ceil(n_examples / per_step) * math.ceil(self.num_train_epochs))

    def training_arguments(self, output_dir: str, n_examples: int, world_size: int = 1) -> Any:
        import torch
        from transformers import TrainingArguments

        warmup = int(self.warmup_ratio * self.total_steps(n_examples, world_size))
        return TrainingArguments(
            output_dir=output_dir,
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            warmup_steps=warmup,
            lr_scheduler_type=self.lr_scheduler_type,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed,
            data_seed=self.seed,
            bf16=self.bf16,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_steps > 0 else "no",
            save_steps=self.save_steps or 500,
            save_total_limit=2,  # the newest may be half-written if the run was killed
            report_to="none",
            remove_unused_columns=False,
            disable_tqdm=not self.progress,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            optim="adamw_torch",
            # without a GPU, processes launched by `accelerate launch --multi_gpu` or torchrun
            # train as one DDP job over gloo (as "multi-CPU"), instead of each on its own
            use_cpu=not torch.cuda.is_available(),
            ddp_find_unused_parameters=False,  # every parameter is in the one policy forward
        )
