"""The trainer's scratch folder for runs without checkpoints, and what killed runs left of it.

transformers' `Trainer` makes its output folder on the main process even when it saves
nothing, so a run without checkpoints hands it a temporary folder, removed when the run ends.
A run killed with SIGKILL cannot remove it: every killed bench cell used to leave an empty
`trimtab-trainer-*` folder in the temp directory. The folder's name now holds its process id,
and each new run removes the empty ones whose process is gone (never a folder with anything
in it, so no data can be lost).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PREFIX = "trimtab-trainer-"


def scratch_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder for the trainer, named after this process; killed runs' empty
    folders are removed first."""
    remove_abandoned()
    return tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-",
                                       ignore_cleanup_errors=True)


def remove_abandoned(folder: str | os.PathLike | None = None) -> list[Path]:
    """Remove the empty trainer folders in `folder` (default: the temp directory) whose
    process no longer runs; returns them."""
    if os.name != "posix":  # liveness by signal 0 is POSIX-only (on Windows 0 is CTRL_C_EVENT)
        return []
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        try:
            path.rmdir()  # only an empty folder
        except OSError:
            continue
        removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
