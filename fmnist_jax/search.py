"""Hyperparameter search: `run(config, workdir)` tries the trials of `config.search` and trains the
best one, as the Keras Tuner tutorial does.

Trials ride the run axis. The trials trained for the same number of epochs that share every value
that shapes the program (a width, say) are one sweep: one compiled program, each trial a member
with its own values of the keys that only change numbers (learning rate, dropout, ...), all side
by side (`run_axis`'s rows of values). Trials of another width are another program. Hyperband
trains each rung's survivors again from the start for the rung's epochs.

A search is runs in `workdir/trials/` and a file of its own: each population is a normal run
directory, so a search stopped at any point and started again with the same command skips what is
trained and goes on (every choice is a function of the seed and of results on disk). Then:

- search.json: `trials` (each with `hparams`, per-epoch `val_accuracy` and `val_loss`, `epochs`,
  `stopped` with its reason, and `objective`), `best` (the trial chosen on validation, never on
  test) and `algorithm`; search.md, the best trials as a table; search.png, the figures;
- fit/: the best trial trained `search.final_epochs` epochs, to find its best epoch;
- best/: the best trial retrained to that epoch, a normal run directory with its test accuracy,
  checkpoints and export (`predict`, `evaluate` and `inference.load` work on it).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from absl import logging
from ml_collections import ConfigDict

from fmnist_jax import config as config_lib
from fmnist_jax import config_checks
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.early_stopping import EarlyStopping
from fmnist_jax.errors import UserError
from fmnist_jax.search_space import Dimension, Sampler, dimensions, hyperband_brackets

ALGORITHMS = ("grid", "random", "halton", "tpe", "hyperband")
_NOT_SEARCHABLE = ("num_epochs", "num_seeds", "seed", "grid", "plots", "data.num_validation")


def check(config: ConfigDict) -> list[Dimension]:
    """The space of a search that can work, or one clear `UserError`."""
    s = config.search
    config_checks.validate(config)
    if s.algorithm not in ALGORITHMS:
        raise UserError(
            f"Unknown search.algorithm={s.algorithm!r}; choose one of {', '.join(ALGORITHMS)}."
        )
    for key in ("trials", "population", "max_epochs", "factor"):
        if not (isinstance(s[key], int) and s[key] >= (2 if key == "factor" else 1)):
            raise UserError(f"search.{key} must be an integer >= {2 if key == 'factor' else 1}.")
    if s.objective not in config_lib.MONITORS:
        raise UserError(f"search.objective must be one of {', '.join(config_lib.MONITORS)}.")
    if config.data.num_validation <= 0 or config.grid or config.num_seeds != 1:
        raise UserError(
            "A search chooses on the validation split, one seed per trial, from its own space: "
            "set data.num_validation > 0, num_seeds=1 and no grid."
        )
    space = dimensions(s.space)
    for d in space:
        if d.key in _NOT_SEARCHABLE or d.key.startswith("search."):
            raise UserError(
                f"search.space cannot search {d.key}: the search sets it itself (epochs by "
                "search.max_epochs and Hyperband, one seed per trial, its own populations). "
                "Search model, optimizer, schedule, augmentation or loss settings."
            )
        for value in d.values() if d.kind in ("int", "choice") else d.args:
            config_checks.validate(_with_trial(config, {d.key: value}))
    return space


def _with_trial(config: ConfigDict, hparams: dict[str, Any]) -> ConfigDict:
    """`config` with a trial's values; an integer for a tuple of widths is a one-layer width."""
    values = {
        key: (value,) if _is_widths(config, key) and not isinstance(value, (tuple, list)) else value
        for key, value in hparams.items()
    }
    try:
        return config_lib.with_values(config, values)
    except UserError as e:
        raise UserError(f"search.space: {e}") from None


def _is_widths(config: ConfigDict, key: str) -> bool:
    try:
        return isinstance(config[key], (tuple, list))
    except KeyError:  # not a key: `with_values` says so
        return False


def run(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the search `config.search` in `workdir` (resuming what is there) and trains its best
    trial; returns search.json's content."""
    space = check(config)
    workdir_lib.lock(workdir)
    try:
        _claim(config, workdir)
        start = time.perf_counter()
        trials = _search(config, space, workdir)
        result = _result(config, trials)
        result["search_seconds"] = time.perf_counter() - start
        result["best_epoch"], result["final"] = _train_best(config, workdir, trials[result["best"]])
        result["seconds"] = time.perf_counter() - start
        from fmnist_jax.reports import search_reports

        search_reports.write(workdir, result, config.plots)
        return result
    finally:
        workdir_lib.unlock(workdir)


def _claim(config: ConfigDict, workdir: str) -> None:
    """config.json of the search: a workdir holds one search, resumed only with the same config."""
    path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    wanted = workdir_lib.config_as_json(config)
    if os.path.exists(path):
        differences = workdir_lib.config_differences(workdir_lib.read_json(path), wanted)
        workdir_lib.refuse_other_config(f"Search workdir {workdir}", differences)
    workdir_lib.write_json(path, wanted)


def _search(config: ConfigDict, space: list[Dimension], workdir: str) -> list[dict[str, Any]]:
    s = config.search
    clock = [0.0]
    maximize = s.objective == "val_accuracy"
    sampler = Sampler(
        "random" if s.algorithm == "hyperband" else s.algorithm, space, s.seed, maximize
    )
    trials: list[dict[str, Any]] = []
    if s.algorithm == "hyperband":
        for b, bracket in enumerate(hyperband_brackets(s.max_epochs, s.factor)):
            alive = _new_trials(trials, sampler.ask(bracket[0][0]))
            for r, (_, epochs) in enumerate(bracket):
                _train(config, workdir, alive, epochs, f"bracket{b}-rung{r}", clock)
                if r + 1 < len(bracket):
                    keep = max(1, len(alive) // s.factor)
                    ranked = sorted(alive, key=lambda t: _rank(t, maximize))
                    for t in ranked[keep:]:
                        t["stopped"] = (
                            t["stopped"]
                            if t["stopped"] == "diverged"
                            else f"pruned after {epochs} epochs"
                        )
                    alive = ranked[:keep]
        return trials
    budget = s.trials if s.algorithm != "grid" else math.prod(len(d.values()) for d in space)
    round_size = s.population if s.algorithm == "tpe" else budget
    while len(trials) < budget:
        asked = sampler.ask(min(round_size, budget - len(trials)))
        if not asked:
            break
        tag = f"round{len(trials) // round_size}"
        batch = _new_trials(trials, asked)
        _train(config, workdir, batch, s.max_epochs, tag, clock)
        for t in batch:
            sampler.tell(t["hparams"], t["objective"])
    return trials


def _new_trials(trials: list[dict[str, Any]], asked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    new = [{"index": len(trials) + i, "hparams": h, "stopped": None} for i, h in enumerate(asked)]
    trials.extend(new)
    return new


def _rank(trial: dict[str, Any], maximize: bool) -> float:
    """Sorting key: best trials first, diverged last."""
    objective = trial["objective"]
    if objective is None:
        return math.inf
    return -objective if maximize else objective


def _train(
    config: ConfigDict,
    workdir: str,
    trials: list[dict[str, Any]],
    epochs: int,
    tag: str,
    clock: list[float],
) -> None:
    """Trains `trials` for `epochs`, one program per shape, and records each one's curves;
    `clock[0]` counts the search's seconds of training and compiling."""
    from fmnist_jax import train as train_lib

    shapes: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        shape = {k: v for k, v in t["hparams"].items() if k not in config_lib.SWEEPABLE}
        shapes.setdefault(repr(sorted(shape.items())), []).append(t)
    for g, group in enumerate(shapes.values()):
        hparams = group[0]["hparams"]
        fixed = {k: v for k, v in hparams.items() if k not in config_lib.SWEEPABLE}
        swept = [k for k in hparams if k in config_lib.SWEEPABLE]
        population = _with_trial(config, fixed)
        population.search = config_lib.default().search
        population.num_epochs, population.plots = epochs, False
        if swept:
            population.grid = (
                (tuple(swept), tuple(tuple(t["hparams"][k] for k in swept) for t in group)),
            )
        run_dir = os.path.join(workdir, "trials", f"{tag}-shape{g}")
        summary = train_lib.train_and_evaluate(population, run_dir)
        clock[0] += summary["train_seconds"] + summary["compile_seconds"]
        history = workdir_lib.read_history(run_dir)
        for m, t in enumerate(group):
            _record(config, t, history, m if swept else 0, epochs)
            t["seconds"] = clock[0]  # training and compiling so far: the same when resumed
        logging.info(
            "Search %s, shape %d: %d trial(s) of %d epochs done.", tag, g, len(group), epochs
        )


def _record(
    config: ConfigDict, trial: dict[str, Any], history: list[dict[str, Any]], run: int, epochs: int
) -> None:
    """A trial's curves, its epochs (cut where early stopping would stop it alone), its objective
    (the best value over those epochs) and why it stopped."""
    val_accuracy = [row["val_accuracy_seeds"][run] for row in history]
    val_loss = [row["val_loss_seeds"][run] for row in history]
    train_loss = [row["train_loss_seeds"][run] for row in history]
    cut = _early_stop_epoch(config, val_accuracy, val_loss) or len(history)
    trial.update(val_accuracy=val_accuracy[:cut], val_loss=val_loss[:cut], epochs=cut)
    values = trial[config.search.objective]
    if not all(map(math.isfinite, train_loss[:cut] + values)):
        trial.update(objective=None, stopped="diverged")
        return
    trial["objective"] = max(values) if config.search.objective == "val_accuracy" else min(values)
    trial["stopped"] = "early stopping" if cut < epochs else f"finished {epochs} epochs"


def _early_stop_epoch(
    config: ConfigDict, val_accuracy: list[float], val_loss: list[float]
) -> int | None:
    """The epoch early stopping would end this trial at, or None (off, or never)."""
    es = config.early_stopping
    if not es.enabled:
        return None
    stopper = EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta)
    curve = val_accuracy if es.monitor == "val_accuracy" else val_loss
    for epoch, value in enumerate(curve, start=1):
        stopper.update(epoch, value)
        if stopper.should_stop:
            return epoch
    return None


def _result(config: ConfigDict, trials: list[dict[str, Any]]) -> dict[str, Any]:
    maximize = config.search.objective == "val_accuracy"
    finished = [t for t in trials if t["objective"] is not None]
    if not finished:
        raise UserError(
            "Every trial of the search diverged (its loss became NaN or infinite): lower the "
            "learning rates in search.space, or set optimizer.grad_clip_norm (e.g. 1.0)."
        )
    best = min(finished, key=lambda t: _rank(t, maximize))
    return {
        "algorithm": config.search.algorithm,
        "objective": config.search.objective,
        "space": [list(entry) for entry in config.search.space],
        "trials": trials,
        "best": best["index"],
    }


def _train_best(
    config: ConfigDict, workdir: str, best: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """(the best epoch, the summary of best/): the best trial trained `final_epochs` in fit/ to
    find its best epoch on validation, then retrained to it in best/."""
    from fmnist_jax import train as train_lib

    trial_config = _with_trial(config, best["hparams"])
    trial_config.search = config_lib.default().search
    curve = best[config.search.objective]
    if config.search.final_epochs:
        trial_config.num_epochs = config.search.final_epochs
        trial_config.early_stopping = config_lib.default().early_stopping  # the tutorial's fit
        fit_dir = os.path.join(workdir, "fit")
        train_lib.train_and_evaluate(trial_config, fit_dir)
        history = workdir_lib.read_history(fit_dir)
        curve = [row[config.search.objective] for row in history]
    pick = max if config.search.objective == "val_accuracy" else min
    best_epoch = curve.index(pick(curve)) + 1
    trial_config.num_epochs = best_epoch
    summary = train_lib.train_and_evaluate(trial_config, os.path.join(workdir, "best"))
    return best_epoch, {
        k: summary[k]
        for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_seconds")
    }
