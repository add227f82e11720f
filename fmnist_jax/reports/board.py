"""TensorBoard event files of a run, in `<workdir>/tensorboard/`: `tensorboard --logdir=<workdir>`.

Per epoch: train and validation loss and accuracy, learning rate, examples/s. At the end: the test
metrics, the config as hparams (so runs compare in TensorBoard's HParams tab) and a figure of
sample test predictions. Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

from fmnist_jax.workdir import BOARD_DIR, HPARAMS_RUN


class Board:
    """Writes a run's scalars, hparams and figures; every method is a no-op when disabled."""

    def __init__(self, workdir: str, enabled: bool = True):
        self._writer = SummaryWriter(os.path.join(workdir, BOARD_DIR)) if enabled else None

    def epoch(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            return
        for key, value in row.items():
            # Per-run lists stay in metrics.jsonl; a sweep's diverged member makes a mean NaN.
            if key != "epoch" and not isinstance(value, list) and math.isfinite(value):
                split, _, metric = key.partition("_")
                tag = f"{split}/{metric}" if split in ("train", "val") else key
                self._writer.add_scalar(tag, value, row["epoch"])
        self._writer.flush()

    def finish(
        self, hparams: dict[str, Any], result: dict[str, Any], images: dict[str, np.ndarray]
    ) -> None:
        """Test metrics, hparams (flattened config keys) and RGB `images` ([H, W, 3]) by tag."""
        if self._writer is None:
            return
        metrics = {
            f"test/{k.removeprefix('test_')}": result[k] for k in ("test_loss", "test_accuracy")
        }
        for tag, value in metrics.items():
            self._writer.add_scalar(tag, value, result["epochs_run"])
        for tag, image in images.items():
            self._writer.add_image(tag, image, result["epochs_run"], dataformats="HWC")
        self._writer.add_hparams(
            hparams, {f"hparam/{k}": v for k, v in metrics.items()}, name=HPARAMS_RUN
        )
        self._writer.close()


def write_members(workdir: str, result: dict[str, Any]) -> None:
    """A sweep's members as TensorBoard runs, `tensorboard/members/<member>/`: each member's curves
    (means over its seeds) per epoch, and its values with its validation and test accuracy as
    hparams (TensorBoard's HParams tab compares them)."""
    for m in result["members"]:
        writer = SummaryWriter(
            os.path.join(workdir, BOARD_DIR, "members", m["name"].replace(" ", ","))
        )
        for key, values in m["curves"].items():
            split, _, metric = key.partition("_")
            for epoch, value in zip(result["epochs"], values, strict=True):
                if value is not None:
                    writer.add_scalar(f"{split}/{metric}", value, epoch)
        scores = {
            f"hparam/{k}": m[k] for k in ("val_accuracy", "test_accuracy") if m[k] is not None
        }
        writer.add_hparams(m["hparams"], scores, name=HPARAMS_RUN)
        writer.close()


def write_trials(workdir: str, result: dict[str, Any]) -> None:
    """A search's trials as TensorBoard runs, `tensorboard/trials/<index>/`: each trial's
    validation curve and its values with its objective as hparams (the HParams tab compares them)."""
    objective = result["objective"]
    for trial in result["trials"]:
        writer = SummaryWriter(os.path.join(workdir, BOARD_DIR, "trials", str(trial["index"])))
        for epoch, value in enumerate(trial.get(objective, []), start=1):
            if math.isfinite(value):
                writer.add_scalar(f"val/{objective.removeprefix('val_')}", value, epoch)
        hparams = {k.rpartition(".")[2]: v for k, v in trial["hparams"].items()}
        scores = {} if trial["objective"] is None else {f"hparam/{objective}": trial["objective"]}
        writer.add_hparams(hparams, scores, name=HPARAMS_RUN)
        writer.close()
