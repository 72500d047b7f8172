"""Setup work shared out among the processes of one `accelerate launch` job.

An objective's setup judges every training pair once (`risk-kl`'s critic, `gated`'s pre-gate,
`pact`'s mass critic). Every process needs all the verdicts, but if each judged every pair,
eight GPUs would send an HTTP judge eight times the requests, and a judge that samples could
give the processes different verdicts. Instead each process judges a contiguous share and
the shares are gathered, in order, on every process.
"""

from __future__ import annotations

import os
from typing import Any


def process_count() -> int:
    """Processes in this job (`WORLD_SIZE`, set by accelerate and torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def my_share(n: int) -> slice:
    """This process's contiguous share of `n` items; shares differ in size by at most one."""
    count = process_count()
    if count <= 1:
        return slice(0, n)
    rank = int(os.environ.get("RANK", "0"))
    size, extra = divmod(n, count)
    start = rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


def gather_shares(part: list[Any]) -> list[Any]:
    """Every process's `part` (from `my_share`), concatenated in process order, on every
    process. Starts the job's process group if the trainer has not yet (same device choice
    as trimtab's training arguments: the CPU when there is no GPU)."""
    if process_count() <= 1:
        return part
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())
    parts: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, part)
    return [item for share in parts for item in share]
