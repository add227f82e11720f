"""The run's progress bar: steps over the whole run, steps/s, ETA and the last epoch's metrics.

`tqdm.auto` draws it where someone watches: a widget in Jupyter and Colab (a text bar where
ipywidgets is missing), a bar that rewrites itself on a terminal. Elsewhere (log files, CI) the bar
becomes an INFO log line at most every 30 s, so long epochs still show they advance without
flooding the log.
"""

from __future__ import annotations

import sys
import warnings
from typing import TextIO

from absl import logging

from fmnist_jax.records.metrics import EpochRow
from fmnist_jax.reports import in_notebook, lines

_REFRESH_SECONDS, _LOG_EVERY_SECONDS = 0.1, 30.0


class _LogLines:
    """A file for tqdm that turns each refresh of the bar into one log line."""

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            logging.info("%s", text)

    def flush(self) -> None:
        pass


class Progress:
    """One bar per run, advanced between an epoch's compiled calls and at each epoch's end."""

    def __init__(
        self,
        num_epochs: int,
        steps_per_epoch: int,
        epochs_done: int,
        stream: TextIO | None = None,
    ):
        stream = stream or sys.stderr
        watched = in_notebook() or stream.isatty()
        # Without ipywidgets tqdm.auto warns and falls back to its text bar, which Jupyter shows.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
        self._steps_per_epoch, self._num_epochs = steps_per_epoch, num_epochs
        self._bar = tqdm(
            total=num_epochs * steps_per_epoch,
            initial=epochs_done * steps_per_epoch,
            desc=self._description(epochs_done),
            unit=" steps",
            file=stream if watched else _LogLines(),
            mininterval=_REFRESH_SECONDS if watched else _LOG_EVERY_SECONDS,
            ascii=not watched,
            dynamic_ncols=watched,
            delay=0 if watched else _LOG_EVERY_SECONDS,  # a log gets no 0% line
            leave=watched,
        )

    def steps(self, epoch: int, steps_done: int) -> None:
        """`steps_done` steps of epoch `epoch` (1-based) are done."""
        self._advance((epoch - 1) * self._steps_per_epoch + steps_done)

    def epoch(self, row: EpochRow, line: str) -> None:
        """Epoch `row['epoch']` is done: logs its `line` above the bar, which shows its metrics
        until the next epoch's."""
        splits = ("train", "val") if "val_loss" in row else ("train",)
        metrics = {
            f"{'val_' if split == 'val' else ''}{short}": row[f"{split}_{name}"]
            for split in splits
            for name, short in lines.short_names().items()
        }
        self._bar.set_description(self._description(row["epoch"]), refresh=False)
        self._bar.set_postfix({k: f"{v:.4f}" for k, v in metrics.items()}, refresh=False)
        self._advance(row["epoch"] * self._steps_per_epoch)
        with self._bar.external_write_mode():
            logging.info("%s", line)

    def _description(self, epochs_done: int) -> str:
        """The epoch in progress (the last one once all are done)."""
        return f"epoch {min(epochs_done + 1, self._num_epochs)}/{self._num_epochs}"

    def _advance(self, step: int) -> None:
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()
