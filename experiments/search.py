"""Search hyperparameters: the trials of `config.search`, then the best one trained and tested.

    python -m experiments.search --config=configs/search_mlp.py --workdir=runs/search \
        [--config.search.algorithm=tpe] [--config.key=value ...]

The config's `search` block holds the space, Optuna's sampler and pruner, the budget, the
objective and the study's storage (fmnist_jax/config/__init__.py, fmnist_jax/tuning/search.py).
Writes the study to --workdir's search.db (or to `search.storage`, a database that workers on other
machines share: run the same command there with their own --workdir), search.json, search.md,
search.png and TensorBoard HParams to --workdir, the population's checkpoints under population/,
and the best trial's longer fit, taken back to its best epoch, under best/ (`predict`, `evaluate`
and `inference.load` work on it). The same command again resumes a stopped search.
"""

from __future__ import annotations

import os
import shlex

from absl import flags
from ml_collections import config_flags

from fmnist_jax import cli
from fmnist_jax.tuning import search as search_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the search.", required=True)
config_flags.DEFINE_config_file("config", None, "Search config file, e.g. configs/search_mlp.py.")


def _search() -> None:
    from fmnist_jax.reports import search_reports

    config = cli.load_config()
    result = search_lib.run(config, _WORKDIR.value)
    best = next(t for t in result["trials"] if t["index"] == result["best"])
    trained = (
        f"best/ holds it at its best epoch, {result['best_epoch']}; "
        f"{result['final']['train_seconds']:.1f} s of training in best/"
        if "final" in result
        else f"the worker that finished the study's last trial trains it in {result['best_run']}"
    )
    print(
        f"{search_reports.table(result)}\nBest on validation: trial {best['index']} "
        f"{best['hparams']}; {trained}. {result['search_seconds']:.1f} s of search here "
        f"(compiling and training). Reports: "
        f"{os.path.join(_WORKDIR.value, search_reports.TABLE_FILE)}, "
        f"tensorboard --logdir={shlex.quote(_WORKDIR.value)}"
    )


if __name__ == "__main__":
    cli.main(_search)
