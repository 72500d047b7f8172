"""Post-hoc alignment recovery: `recover` (gradient-chosen weight restoration with rollback)
and the `resta` task-arithmetic baseline. A method named `sft+recover` fine-tunes with `sft`
and then applies `recover` (see `trimtab.pipeline.run_cell`)."""

from trimtab.recovery.api import (
    POSTHOC_STEPS,
    apply_posthoc,
    recover_checkpoint,
    resta_checkpoint,
)
from trimtab.recovery.config import SYNTHETIC_RECOVER, RecoverConfig, RestaConfig
from trimtab.recovery.recover import recover_model
from trimtab.recovery.resta import resta_model
from trimtab.recovery.validation import RecoveryData, recovery_data, synthetic_recovery_data

POSTHOC_CONFIGS = {"recover": RecoverConfig, "resta": RestaConfig}
# What `sft+recover` uses in the synthetic world unless a config is given (see config.py).
SYNTHETIC_POSTHOC = {"recover": SYNTHETIC_RECOVER, "resta": RestaConfig()}

__all__ = [
    "POSTHOC_CONFIGS",
    "POSTHOC_STEPS",
    "RecoverConfig",
    "RecoveryData",
    "RestaConfig",
    "SYNTHETIC_POSTHOC",
    "SYNTHETIC_RECOVER",
    "apply_posthoc",
    "recover_checkpoint",
    "recover_model",
    "recovery_data",
    "resta_checkpoint",
    "resta_model",
    "synthetic_recovery_data",
]
