"""TensorBoard event files of a run, in `<workdir>/tensorboard/`: `tensorboard --logdir=<workdir>`.

Per epoch: train and validation loss and accuracy, learning rate, examples/s. At the end: the test
metrics, the config as hparams (so runs compare in TensorBoard's HParams tab) and a figure of
sample test predictions. Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import os
from typing import Any

from tensorboardX import SummaryWriter

DIRECTORY = "tensorboard"


class Board:
    """Writes a run's scalars, hparams and figures; every method is a no-op when disabled."""

    def __init__(self, workdir: str, enabled: bool = True):
        self._writer = SummaryWriter(os.path.join(workdir, DIRECTORY)) if enabled else None

    def epoch(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and not isinstance(
                value, list
            ):  # per-seed lists stay in metrics.jsonl
                split, _, metric = key.partition("_")
                tag = f"{split}/{metric}" if split in ("train", "val") else key
                self._writer.add_scalar(tag, value, row["epoch"])
        self._writer.flush()

    def finish(
        self, hparams: dict[str, Any], result: dict[str, Any], figures: dict[str, Any]
    ) -> None:
        """Test metrics, hparams (flattened config keys) and matplotlib `figures` by tag."""
        if self._writer is None:
            return
        metrics = {
            f"test/{k.removeprefix('test_')}": result[k] for k in ("test_loss", "test_accuracy")
        }
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, result["epochs_run"])
        for tag, figure in figures.items():
            self._writer.add_figure(tag, figure, result["epochs_run"])
        self._writer.add_hparams(
            hparams, {f"hparam/{k}": v for k, v in metrics.items()}, name="hparams"
        )
        self._writer.close()
