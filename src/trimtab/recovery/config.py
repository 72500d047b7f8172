"""Every constant of the post-hoc steps, declared once: `RecoverConfig` and `RestaConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from trimtab.config import SEED_MAX, CheckedConfig, option


@dataclass
class RecoverConfig(CheckedConfig):
    """Gradient-chosen restoration of fine-tuned weights to their aligned values, with rollback.

    Fractions of weights are fractions of the *eligible* weights: the linear weights of the
    decoder layers below `layer` (norms and embeddings are never touched).
    """

    # --- where the directions are read and what may change
    layer: int | None = option(None, "hidden-state layer L of the directions (output of block L); "
                                     "blocks below it may be restored (none: from layer_fraction)",
                               min=1)
    layer_fraction: float = option(0.67, "L as a fraction of the depth when layer is none "
                                         "(about 2/3, as in the paper)", min=0.0, max=1.0)
    restore_fraction: float = option(0.002, "r: fraction of the eligible weights restored per "
                                            "step, the top by |gradient|", min=0.0, max=1.0)
    max_changed_fraction: float = option(0.04, "cap on the fraction of eligible weights that may "
                                               "differ from the fine-tuned model", min=0.0,
                                         max=1.0)
    steps: int = option(20, "most restoration steps", min=1)
    target_harmful_rate: float = option(0.0, "stop early once the validation harmful rate is at "
                                             "or below this", min=0.0, max=1.0)
    # --- rollback
    task_drop: float = option(0.05, "largest relative drop of the validation task score from the "
                                    "fine-tuned model's before a rollback", min=0.0, max=1.0)
    rollback_fraction: float = option(0.2, "share of a step's restored weights put back per "
                                           "rollback round (those serving the benign direction "
                                           "most)", min=0.0, max=1.0)
    rollback_rounds: int = option(3, "rollback rounds per step before giving up on the step",
                                  min=1)
    # --- data (synthetic world: training pools only, never the evaluation sets)
    n_direction: int = option(64, "prompts per direction (harmful, and benign for rollback)",
                              min=1)
    n_val_harmful: int = option(48, "harmful prompts of the validation harmful rate", min=1)
    n_val_task: int = option(64, "task examples of the validation task score (exact match)",
                             min=1)
    val_max_new_tokens: int = option(8, "greedy tokens generated per validation prompt: a "
                                        "refusal shows in its first words", min=1)
    batch_size: int = option(64, "prompts per forward pass", min=1)
    seed: int = option(0, "seed of the validation and direction samples", min=0, max=SEED_MAX)
    dtype: str = option("float32", "dtype both models are loaded in (restored values are "
                                   "copied exactly)", choices=("float32", "bfloat16", "float16"))


@dataclass
class RestaConfig(CheckedConfig):
    """Task arithmetic: fine-tuned + scale * (aligned - unaligned), the safety vector added back."""

    scale: float = option(1.0, "multiplier of the safety vector (aligned - unaligned)", min=0.0)


# The synthetic world's model is 4 blocks deep (3 in the quick world): two thirds of it is
# one block short of where it decides to refuse (restoring every weight of blocks 1-2 entirely
# leaves the quick model's harmful rate at 0.77), so L is its last block. It has 0.85M
# eligible weights; r = 0.5% reaches the 4% cap in 8 steps, where the paper's 0.2% needs 20
# steps of validation for the same restored weights. It runs every step (target 0): stopping
# once the 48-prompt validation rate reached 5% left the held-out harmful rate at 0.125, where
# running on to the cap reaches 0.042 with the same task accuracy.
SYNTHETIC_RECOVER = RecoverConfig(layer_fraction=1.0, restore_fraction=0.005, steps=8)
