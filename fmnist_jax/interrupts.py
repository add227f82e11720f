"""Clean stops: SIGINT (Ctrl-C) and SIGTERM (how Colab, Cloud TPU and job schedulers preempt) ask
the run to stop; it stops after the compiled call in flight, keeps what is saved, and says so.

A second SIGINT stops at once (KeyboardInterrupt). Only the command-line programs install the
handlers; in a notebook Ctrl-C/interrupt keeps Python's behaviour. The training loop asks
`check` between epochs and between an epoch's compiled calls, and `check_while_compiling` while
its programs compile.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fmnist_jax.records.checkpoint import Checkpoints

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


def check(epoch: int, checkpoints: Checkpoints, save: Callable[[], None] | None = None) -> None:
    """Raises `Stopped` saying what is saved, after the in-flight checkpoints finish, if SIGINT or
    SIGTERM asked for a stop (in every process, or in none, when there are several).

    Between epochs, `save` first writes the `latest/` checkpoint of the epochs run, if it is not
    written yet; mid-epoch (`save` None) the newest written one is what resumes."""
    import jax  # here: data preparation uses this module without JAX
    from jax.experimental import multihost_utils

    signal_number = requested()
    if jax.process_count() > 1:
        gathered = multihost_utils.process_allgather(np.int32(signal_number or 0))
        signal_number = int(np.max(gathered))
    if not signal_number:
        return
    if save is not None:
        save()
    checkpoints.wait()
    saved = checkpoints.latest_epoch()
    where = f"before epoch {epoch}" if save is not None else f"during epoch {epoch}"
    kept = (
        f"epoch {saved} is saved in {checkpoints.directory('latest')}"
        if saved
        else "no epoch was saved yet"
    )
    raise Stopped(
        signal_number,
        f"Stopped by {signal.Signals(signal_number).name} {where}: {kept}. Re-running the same "
        "command resumes from there.",
    )


def check_while_compiling(latest_directory: str) -> None:
    """Raises `Stopped` if SIGINT/SIGTERM asked for a stop while the programs compile, before this
    process trained or saved anything. Several processes stop together at the first epoch's end
    instead: one that left now would leave the others waiting for it."""
    import jax

    signal_number = requested()
    if signal_number and jax.process_count() == 1:
        raise Stopped(
            signal_number,
            f"Stopped by {signal.Signals(signal_number).name} while compiling, before any "
            "training: nothing was lost. Re-running the same command resumes from the newest "
            f"checkpoint in {latest_directory}, or starts afresh where there is none.",
        )
