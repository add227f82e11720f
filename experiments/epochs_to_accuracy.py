"""Epochs and training seconds until each seed first reaches a training-accuracy target, plus a figure.

    python -m experiments.epochs_to_accuracy --config=configs/mlp.py --config.num_epochs=60 --seeds=3 \
        --target=0.96 --workdir=runs/mlp96 --plot=experiments/mlp_to_96_train/train_accuracy.png

The seeds train together in one program (`num_seeds`); seconds count the epochs' wall time of that
program (all seeds), up to the epoch where each seed first reaches the target. A finished run in
--workdir is read back, not retrained.
"""

from __future__ import annotations

import json
import os

from absl import flags
from ml_collections import config_flags

from fmnist_jax import cli
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports import lines, plots
from fmnist_jax.training import train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mlp.py", "Config file.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds trained together (num_seeds).")
_TARGET = flags.DEFINE_float("target", 0.96, "Training accuracy to reach.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/epochs_to_accuracy", "The run's workdir.")
_PLOT = flags.DEFINE_string(
    "plot", None, "Figure path (default: <workdir>/plots/epochs_to_accuracy.png)."
)


def _epochs_to_accuracy() -> None:
    config = _CONFIG.value
    config.num_seeds = _SEEDS.value
    summary = train.train_and_evaluate(config, _WORKDIR.value)
    with open(os.path.join(_WORKDIR.value, workdir_lib.METRICS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    per_seed = {
        f"seed {config.seed + k}": [r["train_accuracy_seeds"][k] for r in rows]
        for k in range(config.num_seeds)
    }
    epochs = [r["epoch"] for r in rows]
    table = [
        f"| seed | first epoch with train accuracy >= {_TARGET.value} | training seconds until then (all seeds) | final train accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for label, values in per_seed.items():
        reached = next(
            (e for e, v in zip(epochs, values, strict=False) if v >= _TARGET.value), None
        )
        seconds = sum(
            r["epoch_seconds"] for r in rows if reached is not None and r["epoch"] <= reached
        )
        table.append(f"| {label} | {reached or 'not reached'} | {seconds:.1f} | {values[-1]:.4f} |")
    plot = _PLOT.value or os.path.join(_WORKDIR.value, lines.PLOTS_DIR, "epochs_to_accuracy.png")
    plots.save(plots.curves_to_target(epochs, per_seed, _TARGET.value, "training accuracy"), plot)
    std = f" ± {summary['test_accuracy_std']:.4f}" if "test_accuracy_std" in summary else ""
    print(
        "\n".join(table)
        + f"\n\ntest accuracy after {len(rows)} epochs: {summary['test_accuracy']:.4f}{std}; figure {plot}"
    )


if __name__ == "__main__":
    cli.main(_epochs_to_accuracy)
