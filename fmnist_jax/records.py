"""The records a run writes: one `EpochRow` per epoch (metrics.jsonl, TensorBoard, the checkpoint's
history) and one `Summary` at the end (summary.json, the return value of `train_and_evaluate`).

Every metric is the mean over the run axis (the seeds), with its standard deviation (`_std`) and
the per-seed values (`_seeds`), whatever the number of seeds.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

import numpy as np


class EpochRow(TypedDict):
    epoch: int
    train_loss: float
    train_loss_std: float
    train_loss_seeds: list[float]
    train_accuracy: float
    train_accuracy_std: float
    train_accuracy_seeds: list[float]
    # Absent when the config holds out no validation split.
    val_loss: NotRequired[float]
    val_loss_std: NotRequired[float]
    val_loss_seeds: NotRequired[list[float]]
    val_accuracy: NotRequired[float]
    val_accuracy_std: NotRequired[float]
    val_accuracy_seeds: NotRequired[list[float]]
    epoch_seconds: float
    examples_per_second: float  # over all seeds
    learning_rate: float  # at the epoch's last step


class Summary(TypedDict):
    test_loss: float
    test_loss_std: float
    test_loss_seeds: list[float]
    test_accuracy: float
    test_accuracy_std: float
    test_accuracy_seeds: list[float]
    best_val_accuracy: float | None  # None without a validation split
    epochs_run: int
    # The epoch whose weights are reported: with early stopping and restore_best, each seed's best.
    restored_epoch: int
    restored_epoch_seeds: list[int]
    train_seconds: float
    compile_seconds: float
    examples_per_second: float
    num_params: int
    backend: str
    devices: int
    device_kind: str
    jax_version: str


def over_runs(split: str, per_run: list[dict[str, float]]) -> dict[str, float | list[float]]:
    """`{split}_loss` and `{split}_accuracy` of per-run metrics: mean, `_std` and `_seeds`."""
    out = {}
    for metric in ("loss", "accuracy"):
        values = np.array([r[metric] for r in per_run])
        out[f"{split}_{metric}"] = float(values.mean())
        out[f"{split}_{metric}_std"] = float(values.std())
        out[f"{split}_{metric}_seeds"] = values.tolist()
    return out
