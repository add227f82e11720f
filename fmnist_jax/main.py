"""Command line: `python -m fmnist_jax.main --config=configs/mlp.py --workdir=DIR [--config.key=value]`.

Only flags live here; everything else is `fmnist_jax.training.train.train_and_evaluate`, which a notebook can
call directly with a ConfigDict.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from fmnist_jax import cli

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for config.json, metrics.jsonl and summary.json.", required=True
)
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/mlp.py.", lock_config=True
)


def _train() -> None:
    from fmnist_jax.config import checks as config_checks
    from fmnist_jax.reports import figure_workers

    config = cli.load_config()
    config_checks.validate(config)  # a config that cannot work starts nothing
    if config.plots and config.distributed.process_id == 0:  # the process that draws the figures
        figure_workers.start()  # they import matplotlib while this process imports JAX
    from fmnist_jax.training.train import (
        train_and_evaluate,  # after flag parsing: keeps --help fast
    )

    train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    cli.main(_train)
