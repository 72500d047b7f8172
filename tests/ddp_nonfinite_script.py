"""Launched by `test_distributed.py` under `accelerate launch` (2 CPU processes): rank 0's
second batch has a NaN loss, which `on_nonfinite_loss=skip` must skip without stalling its
peer or letting the two ranks' weights drift apart.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_nonfinite_script.py MODEL OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from trimtab.data.records import Record
from trimtab.objectives.sft import SFTObjective
from trimtab.training.config import TrainConfig
from trimtab.training.run import finetune


class NaNOnRankZero(SFTObjective):
    """SFT whose second batch on rank 0 has a NaN loss (its graph intact, as for a real
    overflow)."""

    calls = 0

    def compute(self, policy, batch, reference):
        out = super().compute(policy, batch, reference)
        self.calls += 1
        if self.calls == 2 and os.environ.get("RANK", "0") == "0":
            out.loss = out.loss * float("nan")
        return out


def main() -> None:
    model, out = Path(sys.argv[1]), Path(sys.argv[2])
    records = [Record(f"what is the first word in : {w} stone river ?", w)
               for w in ("apple", "stone", "river", "zorb")] * 8
    config = TrainConfig(max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                         progress=False, logging_steps=1, on_nonfinite_loss="skip")
    result = finetune(model, records, NaNOnRankZero(), config)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    rank = os.environ.get("RANK", "0")
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"skipped": result.skipped_batches, "weights": digest.hexdigest()}))


if __name__ == "__main__":
    main()
