"""Setup work shared out among the processes of one `accelerate launch` job.

An objective's setup judges every training pair once (`risk-kl`'s critic, `gated`'s pre-gate,
`pact`'s mass critic). Every process needs all the verdicts, but if each judged every pair,
eight GPUs would send an HTTP judge eight times the requests, and a judge that samples could
give the processes different verdicts. Instead each process judges a contiguous share and
the shares are gathered, in order, on every process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from trimtab.errors import TrimtabError

T = TypeVar("T")


def process_count() -> int:
    """Processes in this job (`WORLD_SIZE`, set by accelerate and torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def share_of(n: int, index: int, count: int) -> slice:
    """Process `index`'s contiguous share of `n` items among `count`; sizes differ by <= 1."""
    size, extra = divmod(n, count)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def _process_state() -> Any:
    """The job's `PartialState`, started as transformers' `TrainingArguments` would start it
    (the CPU when there is no GPU, as trimtab's training arguments say; its `ddp_timeout`), so
    the trainer later finds the process group it would have made."""
    import torch
    from accelerate import PartialState
    from transformers import TrainingArguments

    timeout = TrainingArguments.__dataclass_fields__["ddp_timeout"].default
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout))


def judged_in_shares(judge: Callable[[slice], list[T]], n: int) -> list[T]:
    """`judge(share)` on this process's share of `n` items; every process gets all `n`
    results in order. A failure on any process is raised on every process, so none is left
    waiting for the others."""
    if process_count() <= 1:
        return judge(slice(0, n))
    import torch.distributed as dist

    state = _process_state()
    part: list[T] | None = None
    error: Exception | None = None
    try:
        part = judge(share_of(n, state.process_index, state.num_processes))
    except Exception as err:  # noqa: BLE001 - raised below, after telling the others
        error = err
    failure = None if error is None else f"{type(error).__name__}: {error}"
    parts: list[Any] = [None] * state.num_processes
    dist.all_gather_object(parts, (part, failure))
    if error is not None:
        raise error
    failed = [(i, msg) for i, (_, msg) in enumerate(parts) if msg is not None]
    if failed:
        index, message = failed[0]
        raise TrimtabError(f"process {index} of {state.num_processes} failed while judging its "
                           f"share of the training pairs: {message}")
    out = [item for share, _ in parts for item in share]
    if len(out) != n:
        raise TrimtabError(f"the processes judged {len(out)} of {n} training pairs; every "
                           "process must see the same training data.")
    return out
