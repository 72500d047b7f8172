"""Launched by `test_distributed.py` under `accelerate launch` (2 CPU processes): shares
judged on each process are gathered in order, and a failure on one process is raised on both.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_shares_script.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate import PartialState

from trimtab.training.processes import judged_in_shares

N = 7
out = Path(sys.argv[1])
result = {"gathered": judged_in_shares(lambda share: [i * i for i in range(N)[share]], N)}
rank = PartialState().process_index


def failing(share: slice) -> list[int]:
    if rank == 1:
        raise ValueError("judge down")
    return list(range(N)[share])


try:
    judged_in_shares(failing, N)
    result["error"] = None
except Exception as err:  # noqa: BLE001 - what each process raised is the result
    result["error"] = f"{type(err).__name__}: {err}"
(out / f"rank{rank}.json").write_text(json.dumps(result))
