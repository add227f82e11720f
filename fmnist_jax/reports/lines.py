"""The run's log lines: one per epoch, one at the end."""

from __future__ import annotations

import os
import shlex

from fmnist_jax.records import metrics
from fmnist_jax.records.metrics import EpochRow, Summary

PLOTS_DIR = "plots"


def epoch_line(row: EpochRow, num_epochs: int) -> str:
    val = f"  val {_measured(row, 'val')}" if "val_loss" in row else ""
    return (
        f"epoch {row['epoch']:>3}/{num_epochs}  train {_measured(row, 'train')}{val}  "
        f"{row['epoch_seconds']:.2f} s  {row['examples_per_second']:,.0f} ex/s  "
        f"lr {row['learning_rate']:.2e}"
    )


def short_names() -> dict[str, str]:
    """How the epoch line and the progress bar name the loss and each metric."""
    return {"loss": "loss", **{name: m.short for name, m in metrics.METRICS.items()}}


def _measured(row: EpochRow, split: str) -> str:
    """'loss 0.3000 acc 0.9000' for a split's values in `row`."""
    return " ".join(
        f"{short} {row[f'{split}_{name}']:.4f}" for name, short in short_names().items()
    )


def summary_line(summary: Summary, workdir: str, runs: str) -> str:
    """Test metrics, epochs, training time, and where the run's reports are (its figures, unless
    `config.plots` was off). `runs` names what the run axis holds: seeds, or a sweep's runs
    (members x seeds), whose mean is over different settings."""
    count = len(summary["test_accuracy_seeds"])
    spread = (
        f" (mean of {count} {runs}, std {summary['test_accuracy_std']:.4f})" if count > 1 else ""
    )
    plots = os.path.join(workdir, PLOTS_DIR)
    figures = f"Figures in {plots}; " if os.path.isdir(plots) else ""
    epochs = summary["epochs_run"]
    return (
        f"Test loss {summary['test_loss']:.4f}, test accuracy {summary['test_accuracy']:.4f}{spread} "
        f"({counted(epochs, 'epoch')}, {summary['train_seconds']:.1f} s training). "
        f"{figures}tensorboard --logdir={shlex.quote(workdir)}."
    )


def counted(number: int, noun: str) -> str:
    """A count with its noun, in the singular for one: 1 epoch, 2 epochs."""
    return f"{number} {noun}{'s' * (number != 1)}"
