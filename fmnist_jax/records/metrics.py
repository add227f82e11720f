"""The metrics a run records, and the records it writes: one `EpochRow` per epoch (metrics.jsonl,
TensorBoard, the checkpoint's history) and one `Summary` at the end (summary.json, the return
value of `train_and_evaluate`).

Every split reports its loss and each metric of `METRICS`, declared here once: the train and
evaluation steps sum it over the epoch (`sums`), and metrics.jsonl, summary.json, TensorBoard, the
epoch line, the progress bar and the learning curves show it, with no other edit. Each is the mean
over the run axis (the seeds, or a sweep's members x seeds), with its standard deviation (`_std`)
and the per-run values (`_seeds`), whatever the number of runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NotRequired, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from fmnist_jax.config import run_axis


@dataclasses.dataclass(frozen=True)
class Metric:
    """`per_example(logits [N, classes], labels [N]) -> [N]`, averaged over a split's examples;
    `short`: how the epoch line and the progress bar name it."""

    per_example: Callable[[jax.Array, jax.Array], jax.Array]
    short: str


METRICS: dict[str, Metric] = {
    "accuracy": Metric(lambda logits, labels: jnp.argmax(logits, -1) == labels, "acc"),
}


def names() -> tuple[str, ...]:
    """What every split reports: its loss, then each metric of `METRICS`."""
    return ("loss", *METRICS)


def sums(logits: jax.Array, labels: jax.Array, mask: jax.Array | bool = True) -> dict:
    """Each metric of `METRICS` summed over the examples `mask` marks (all by default)."""
    return {
        name: jnp.sum(jnp.where(mask, metric.per_example(logits, labels), 0.0))
        for name, metric in METRICS.items()
    }


# What a run that learned nothing scores on Fashion-MNIST's 10 balanced classes: the cross-entropy
# of predicting 1/10 for every class, and chance accuracy (0.1) plus the noise of a few thousand
# examples.
UNIFORM_GUESS_LOSS = float(np.log(10))
CHANCE_ACCURACY = 0.15


class Validation(TypedDict):
    """Validation metrics (an epoch's, or the reported weights'); absent without a validation split."""

    val_loss: NotRequired[float]
    val_loss_std: NotRequired[float]
    val_loss_seeds: NotRequired[list[float]]
    val_accuracy: NotRequired[float]
    val_accuracy_std: NotRequired[float]
    val_accuracy_seeds: NotRequired[list[float]]


class EpochRow(Validation):
    epoch: int
    train_loss: float
    train_loss_std: float
    train_loss_seeds: list[float]
    train_accuracy: float
    train_accuracy_std: float
    train_accuracy_seeds: list[float]
    epoch_seconds: float
    examples_per_second: float  # over all seeds
    learning_rate: float  # at the epoch's last step


class Summary(Validation):
    test_loss: float
    test_loss_std: float
    test_loss_seeds: list[float]
    test_accuracy: float
    test_accuracy_std: float
    test_accuracy_seeds: list[float]
    best_val_accuracy: float | None  # None without a validation split
    # The run that the final checkpoint's export, plots and `inference.load` default to: 0, or in a
    # sweep the first seed of the member with the best mean validation accuracy (`best_run`).
    reported_run: int
    epochs_run: int
    # The epoch whose weights are reported: with early stopping and restore_best, each seed's best.
    restored_epoch: int
    restored_epoch_seeds: list[int]
    train_seconds: float
    compile_seconds: float
    examples_per_second: float
    num_params: int
    # What the compiled training call needs on a device (fmnist_jax.engine.memory), and each run's part.
    memory_mib: float
    memory_mib_per_run: float
    backend: str
    devices: int
    device_kind: str
    jax_version: str


def aggregate(split: str, per_run: list[dict[str, float]]) -> dict[str, float | list[float]]:
    """`{split}_loss` and `{split}_<metric>` of per-run metrics: mean, `_std` and `_seeds`."""
    out = {}
    for metric in names():
        values = np.array([r[metric] for r in per_run])
        out[f"{split}_{metric}"] = float(values.mean())
        out[f"{split}_{metric}_std"] = float(values.std())
        out[f"{split}_{metric}_seeds"] = values.tolist()
    return out


def member_means(per_run: list[float], num_seeds: int) -> np.ndarray:
    """Per-run values of a sweep as each member's mean over its seeds (NaN for a diverged one)."""
    return np.asarray(per_run, np.float64).reshape(-1, num_seeds).mean(axis=1)


def best_run(val: dict, config: ConfigDict) -> int:
    """The first run of the sweep member with the best mean validation accuracy (never the test
    split's); a member with a diverged seed cannot be best unless every member diverged."""
    accuracy = np.where(np.isfinite(val["val_loss_seeds"]), val["val_accuracy_seeds"], np.nan)
    means = member_means(accuracy.tolist(), config.num_seeds)
    return int(np.argmax(np.nan_to_num(means, nan=-np.inf))) * config.num_seeds


def member_name(values: dict[str, float]) -> str:
    """A sweep member as `learning_rate=0.001 dropout_rate=0.2` (the last part of each key)."""
    return " ".join(f"{key.rpartition('.')[2]}={value:g}" for key, value in values.items())


def run_name(config: ConfigDict, run: int) -> str:
    """How logs name run `run`: its seed, and in a sweep its member."""
    seed = f"seed {run_axis.RunAxis.of(config).seeds[run]}"
    values = run_axis.run_values(config, run)
    return f"{member_name(values)}, {seed}" if values else seed
