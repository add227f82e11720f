"""The tutorial's search as a JAX user writes it today, the peer of the slot population: Optuna's
TPE with its Hyperband pruner driving this project's single runs one after another.

    python -m experiments.benchmark.optuna_loop --config=configs/search_mlp.py --workdir=DIR \
        [--config.search.seed=S]

Each trial builds and compiles its run's program (`fmnist_jax.engine.program`), trains it epoch by epoch,
reports the validation objective after each epoch and stops when Optuna's pruner or early stopping
says so, or after `search.max_epochs`: the `search` block's space, budget (`trials`) and objective.
Then the same search by the project (`fmnist_jax.tuning.search.run` with TPE and Hyperband, its
execution chosen for the machine), and one JSON line: both searches' seconds, trial-epochs and
best validation objective.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import optuna
from absl import app, flags
from ml_collections import config_flags

from fmnist_jax import data
from fmnist_jax.engine import program as program_lib
from fmnist_jax.training.early_stopping import EarlyStopping
from fmnist_jax.tuning import search
from fmnist_jax.tuning import study as study_lib
from fmnist_jax.tuning.search_space import Dimension

_CONFIG = config_flags.DEFINE_config_file("config", "configs/search_mlp.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the slot population's search writes.")


def _objective(
    config: ml_collections.ConfigDict, splits: data.Splits, space: list[Dimension]
) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: one trial as a single run, reporting its validation after each epoch."""
    s = config.search
    es = config.early_stopping
    maximize = s.objective == "val_accuracy"

    def objective(trial: optuna.Trial) -> float:
        hparams = {d.key: _suggest(trial, d) for d in space}
        trial_config = search.with_trial(config, hparams)
        trial_config.num_epochs = s.max_epochs
        program = program_lib.build(trial_config, splits)
        state, _ = program.compile()
        stopper = EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta)
        curve = []
        for epoch in range(1, s.max_epochs + 1):
            state, _ = program.runner.train_epoch(state, epoch)
            val = program.evaluate(state.weights(), "val").per_run()[0]
            curve.append(val["accuracy" if maximize else "loss"])
            trial.set_user_attr("epochs", epoch)
            trial.report(curve[-1], epoch)
            stopper.update(epoch, val["accuracy"] if es.monitor == "val_accuracy" else val["loss"])
            if trial.should_prune():
                raise optuna.TrialPruned()
            if es.enabled and stopper.should_stop:
                break
        return max(curve) if maximize else min(curve)

    return objective


def _suggest(trial: optuna.Trial, d: Dimension) -> Any:
    if d.kind == "int":
        return trial.suggest_int(d.key, d.args[0], d.args[1], step=d.args[2])
    if d.kind == "choice":
        return trial.suggest_categorical(d.key, list(d.args[0]))
    return trial.suggest_float(d.key, *d.args, log=d.kind == "log_uniform")


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    s = config.search
    space = search.check(config)
    splits = data.load(config.data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        # The search's own study name: Hyperband deals trials to brackets by it, so both searches
        # deal theirs alike.
        study_name=study_lib.study_name(config, _WORKDIR.value),
        direction="maximize" if s.objective == "val_accuracy" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=s.seed),
        pruner=optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=s.max_epochs, reduction_factor=s.factor
        ),
    )
    start = time.perf_counter()
    study.optimize(_objective(config, splits, space), n_trials=s.trials)
    optuna_seconds = time.perf_counter() - start

    config.search.algorithm, config.search.pruner, config.search.final_epochs = (
        "tpe",
        "hyperband",
        0,
    )
    result = search.run(config, _WORKDIR.value)
    print(
        json.dumps(
            {
                "trials": s.trials,
                "optuna_seconds": optuna_seconds,
                "optuna_trial_epochs": sum(t.user_attrs.get("epochs", 0) for t in study.trials),
                "optuna_best": study.best_value,
                "population_search_seconds": result["search_seconds"],
                "population_trial_epochs": sum(t["epochs"] for t in result["trials"]),
                "population_best": result["trials"][result["best"]]["objective"],
                "speedup": optuna_seconds / result["search_seconds"],
            }
        )
    )


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
