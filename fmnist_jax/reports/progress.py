"""A live progress line for long epochs: steps done, examples/s and the epoch's ETA.

On a terminal the line rewrites itself; elsewhere (log files, CI, notebooks without a terminal)
it becomes a plain log line at each quarter of the epoch, so output stays readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from absl import logging


class Progress:
    """Called with the steps done so far in the current epoch; `None` ends the epoch's line."""

    def __init__(
        self,
        epoch: int,
        num_epochs: int,
        steps_per_epoch: int,
        batch_size: int,
        stream: TextIO | None = None,
    ):
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty()
        self._label = f"epoch {epoch:>3}/{num_epochs}"
        self._steps, self._batch = steps_per_epoch, batch_size
        self._start = time.perf_counter()
        self._next_quarter = 1

    def __call__(self, steps_done: int | None) -> None:
        if steps_done is None:
            if self._live:
                self._stream.write("\r\033[K")
                self._stream.flush()
            return
        elapsed = time.perf_counter() - self._start
        rate = steps_done * self._batch / max(elapsed, 1e-9)
        eta = (self._steps - steps_done) * self._batch / max(rate, 1e-9)
        line = f"{self._label}  {steps_done}/{self._steps} steps ({100 * steps_done / self._steps:.0f}%)  {rate:,.0f} ex/s  ETA {eta:.0f} s"
        if self._live:
            self._stream.write("\r\033[K" + line)
            self._stream.flush()
        elif steps_done * 4 >= self._next_quarter * self._steps and steps_done < self._steps:
            self._next_quarter = steps_done * 4 // self._steps + 1
            logging.info("%s", line)
