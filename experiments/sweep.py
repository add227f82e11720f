"""Train a grid of hyperparameters x seeds in one compiled program; choose the best on validation.

    python -m experiments.sweep --config=configs/mlp.py --workdir=runs/sweep \
        --grid=optimizer.learning_rate=3e-4,1e-3,3e-3 --grid=model.dropout_rate=0,0.2 --seeds=3

Every combination of the --grid values (a member) trains with each seed, all at once: the same
data order and dropout keys per seed as single runs. Only keys that change no shape or program
structure can be swept (fmnist_jax.config.SWEEPABLE); compare the others (widths, depths,
optimizers, batch sizes, epochs) with experiments.compare. `--config.key=value` overrides apply
to every member. Writes sweep.json, sweep.md, sweep.png and TensorBoard runs per member to
--workdir (see fmnist_jax/tuning/sweep.py); `inference.load(workdir)` restores the best member.
"""

from __future__ import annotations

import os
import shlex

from absl import flags
from ml_collections import config_flags

from fmnist_jax import cli
from fmnist_jax.config import checks as config_checks
from fmnist_jax.tuning import sweep as sweep_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep's run.", required=True)
config_flags.DEFINE_config_file("config", None, "Base config file, e.g. configs/mlp.py.")
_GRID = flags.DEFINE_multi_string(
    "grid", [], "key=value,value,... (repeat for more keys: every combination trains)."
)
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per member (default: the config's num_seeds).")


def _sweep() -> None:
    config = cli.load_config()
    config.grid = sweep_lib.parse_grid(_GRID.value)
    if _SEEDS.value is not None:
        config.num_seeds = _SEEDS.value
    config_checks.validate(config)  # a sweep that cannot work starts nothing
    result = sweep_lib.train(config, _WORKDIR.value)
    best = result["members"][result["best"]]
    figure = os.path.join(_WORKDIR.value, sweep_lib.FIGURE_FILE)  # unless config.plots is off
    print(
        f"{len(result['members'])} members x {len(result['seeds'])} seed(s) in one program: "
        f"{result['train_seconds']:.1f} s training, {result['compile_seconds']:.1f} s compiling "
        f"({result['backend']}).\n{sweep_lib.table(result)}"
        f"Best on validation: {best['name']} (val {best['val_accuracy']:.4f}, test "
        f"{best['test_accuracy']:.4f}); its first seed is run {result['best_run']}, what "
        f"export/ holds and inference.load('{_WORKDIR.value}') restores. Reports: "
        + (f"{figure}, " if os.path.exists(figure) else "")
        + f"tensorboard --logdir={shlex.quote(_WORKDIR.value)}"
    )


if __name__ == "__main__":
    cli.main(_sweep)
