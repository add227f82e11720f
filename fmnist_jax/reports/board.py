"""TensorBoard event files of a run, in `<workdir>/tensorboard/`: `tensorboard --logdir=<workdir>`.

Per epoch: train and validation loss and accuracy as Keras writes them (runs `train/` and
`validation/`, tags `epoch_loss` and `epoch_accuracy`, so the two curves overlay), learning rate,
examples/s. At the end: the test
metrics, the config as hparams (so runs compare in TensorBoard's HParams tab) and a figure of
sample test predictions. Only process 0 of a multi-host run writes.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter

from fmnist_jax.records import metrics
from fmnist_jax.records.workdir import BOARD_DIR, HPARAMS_RUN
from fmnist_jax.reports import shown

# Keras' TensorBoard callback writes each split as a run of its own with the same tags, so the
# training and validation curves overlay in one chart: a metrics row's prefix -> its run.
SPLIT_RUNS = {"train": "train", "val": "validation"}


class Board:
    """Writes a run's scalars, hparams and figures; every method is a no-op when disabled."""

    def __init__(self, workdir: str, enabled: bool = True):
        root = os.path.join(workdir, BOARD_DIR)
        self._writer = SummaryWriter(root) if enabled else None
        self._splits = (
            {prefix: SummaryWriter(os.path.join(root, run)) for prefix, run in SPLIT_RUNS.items()}
            if enabled
            else {}
        )

    def epoch(self, row: dict[str, Any]) -> None:
        """The epoch's loss and metrics as `epoch_loss`, `epoch_accuracy`, ... in the `train/`
        and `validation/` runs (Keras' tags), the other numbers (their spread over seeds, the learning
        rate, speed) in the main one."""
        if self._writer is None:
            return
        for key, value in row.items():
            # Per-run lists stay in metrics.jsonl; a sweep's diverged member makes a mean NaN.
            if key != "epoch" and not isinstance(value, list) and math.isfinite(value):
                prefix, _, metric = key.partition("_")
                if prefix in self._splits and metric in metrics.names():
                    self._splits[prefix].add_scalar(f"epoch_{metric}", value, row["epoch"])
                else:
                    self._writer.add_scalar(key, value, row["epoch"])
        for writer in (self._writer, *self._splits.values()):
            writer.flush()

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
        for writer in (self._writer, *self._splits.values()):
            writer.close()


def _write_curves(directory: str, curves: dict[str, list[float | None]], epochs: list[int]) -> None:
    """Curves keyed like metrics rows (`train_loss`, `val_accuracy`, ...) as `epoch_<metric>` in
    the `train/` and `validation/` runs under `directory`: several members' or trials' curves then
    overlay in one chart per tag, as a single run's do."""
    writers: dict[str, SummaryWriter] = {}
    for key, values in curves.items():
        prefix, _, metric = key.partition("_")
        if prefix not in SPLIT_RUNS:
            continue
        if prefix not in writers:
            writers[prefix] = SummaryWriter(os.path.join(directory, SPLIT_RUNS[prefix]))
        for epoch, value in zip(epochs, values, strict=False):
            if value is not None and math.isfinite(value):
                writers[prefix].add_scalar(f"epoch_{metric}", value, epoch)
    for writer in writers.values():
        writer.close()


def write_members(workdir: str, result: dict[str, Any]) -> None:
    """A sweep's members as TensorBoard runs, `tensorboard/members/<member>/`: each member's curves
    (means over its seeds) in its `train/` and `validation/` runs, and its values with its
    validation and test accuracy as hparams (TensorBoard's HParams tab compares them)."""
    for m in result["members"]:
        directory = os.path.join(workdir, BOARD_DIR, "members", m["name"].replace(" ", ","))
        _write_curves(directory, m["curves"], result["epochs"])
        scores = {
            f"hparam/{k}": m[k] for k in ("val_accuracy", "test_accuracy") if m[k] is not None
        }
        with SummaryWriter(directory) as writer:
            writer.add_hparams(m["hparams"], scores, name=HPARAMS_RUN)


def write_trials(workdir: str, result: dict[str, Any]) -> None:
    """A search's trials as TensorBoard runs, `tensorboard/trials/<index>/`: each trial's
    validation curves in its `validation/` run, and its values with its objective as hparams."""
    objective = result["objective"]
    for trial in result["trials"]:
        directory = os.path.join(workdir, BOARD_DIR, "trials", str(trial["index"]))
        curves = {key: trial.get(key, []) for key in ("val_accuracy", "val_loss")}
        _write_curves(directory, curves, list(range(1, trial.get("epochs", 0) + 1)))
        hparams = {k.rpartition(".")[2]: shown(v) for k, v in trial["hparams"].items()}
        scores = {} if trial["objective"] is None else {f"hparam/{objective}": trial["objective"]}
        with SummaryWriter(directory) as writer:
            writer.add_hparams(hparams, scores, name=HPARAMS_RUN)
