"""Command line: `python -m fmnist_jax.main --config=configs/mlp.py --workdir=DIR [--config.key=value]`.

Only flags live here; everything else is `fmnist_jax.train.train_and_evaluate`, which a notebook can
call directly with a ConfigDict.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from fmnist_jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics.jsonl and summary.json.", required=True)
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/mlp.py.", lock_config=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from fmnist_jax.train import train_and_evaluate  # after flag parsing: keeps --help fast

    cli.run(lambda: train_and_evaluate(flags.FLAGS.config, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
