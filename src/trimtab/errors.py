"""The exception types the CLI turns into a one-line message and an exit code.

`TrimtabError` is a problem the user can fix; the CLI prints it without a traceback.
`Terminated` is SIGTERM raised as an exception (as Python does with SIGINT and
KeyboardInterrupt), so the `except BaseException` cleanups of half-written temp folders run
when a scheduler or `kill` stops a command, instead of the process vanishing mid-write.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class TrimtabError(Exception):
    """A problem with the user's input or setup; the message names the problem and the fix."""


class Terminated(BaseException):
    """SIGTERM, raised where the process was (a BaseException: `except Exception` lets it by)."""


_stop_requested = False  # set by the handler; the raise itself can be lost (see below)


def _raise_terminated(signum: int, frame: Any) -> None:
    global _stop_requested
    _stop_requested = True
    raise Terminated


def raise_if_terminated() -> None:
    """Raise `Terminated` again if a SIGTERM came. Python runs a signal handler in whatever
    frame is current, and an exception raised inside a `__del__` is printed and dropped: the
    `regex` package's `Group.__del__`, which tokenizers call all the time, swallowed the stop
    of a bench cell that then ran to its end. Training steps, generation batches, the
    bench's wait on its cells and the storing of a cell call this, so a stop holds within a step."""
    if _stop_requested:
        raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` inside the block, where Python still has the default
    handler (the main thread of a process nobody else set one in); restored after."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    global _stop_requested
    _stop_requested = False
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
        raise_if_terminated()  # a stop whose raise was swallowed ends the block as one
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
