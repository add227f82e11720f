"""Clean stops: SIGINT (Ctrl-C) and SIGTERM (how Colab, Cloud TPU and job schedulers preempt) ask
the run to stop; it stops after the compiled call in flight, keeps what is saved, and says so.

A second SIGINT stops at once (KeyboardInterrupt). Only the command-line programs install the
handlers; in a notebook Ctrl-C/interrupt keeps Python's behaviour.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_requested: list[int] = []


class Stopped(Exception):
    """Raised where a run checks for a requested stop; the message says what is saved."""

    def __init__(self, signal_number: int, message: str = ""):
        super().__init__(message or f"Stopped by {signal.Signals(signal_number).name}.")
        self.signal_number = signal_number


def _request(signal_number: int, frame: FrameType | None) -> None:
    if _requested and signal_number == signal.SIGINT:
        raise KeyboardInterrupt
    _requested.append(signal_number)


def install() -> None:
    """Routes SIGINT and SIGTERM to a stop request (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _request)


def requested() -> int | None:
    """The signal that asked for a stop, if one did."""
    return _requested[0] if _requested else None
