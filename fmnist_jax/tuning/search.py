"""Hyperparameter search: `run(config, workdir)` tries the trials of `config.search` and trains the
best one, as the Keras Tuner tutorial does.

The trials train in a population of slots in one compiled program (`population`): each slot one
trial with its own values, the hidden widths and a CNN's channels masked inside the widest. After
every epoch each trial is judged on its validation curve (`search_record`): it stops when it
diverges, when early stopping would stop it, when the pruner stops it at a rung (`pruning`), or
when it has trained `max_epochs`. Its slot then takes the sampler's next trial, and TPE learns from
the stopped one.

The search's record is an Optuna study (`study`): in the workdir's search.db, or in a database
that workers on several machines share, each running this same command in its own workdir. The
slots' state and their trials' numbers are checkpointed after every epoch in workdir/population: a
worker stopped at any point and started again with the same command resumes, and alone it ends
with the identical search. When the study's budget is spent and its last trial has finished:

- search.json: `trials` (each with `hparams`, per-epoch `val_accuracy` and `val_loss`, `epochs`,
  `stopped` with its reason, and `objective`), `best` (the trial chosen on validation, never on
  test) and `algorithm`; search.md, the best trials as a table; search.png, the figures;
- best/: the best trial trained `search.final_epochs` epochs and taken back to its best epoch on
  validation, a normal run directory with its test accuracy, checkpoints and export (`predict`,
  `evaluate` and `inference.load` work on it). Only the worker that finished the study's last
  trial trains it; the others' search.json says where (`best_run`).
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

from absl import logging
from ml_collections import ConfigDict

from fmnist_jax import config as config_lib
from fmnist_jax import interrupts
from fmnist_jax.config import checks as config_checks
from fmnist_jax.config import run_axis
from fmnist_jax.errors import UserError
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.tuning import objectives, search_record
from fmnist_jax.tuning import study as study_lib
from fmnist_jax.tuning.search_space import Dimension, dimensions

# The integer settings of a search: their least value, and what a refusal adds about them.
_INTEGERS = {
    "trials": (1, ""),
    "population": (1, ""),
    "max_epochs": (1, ""),
    "factor": (2, ""),
    "seed": (0, " It seeds the sampler."),
    "heartbeat_seconds": (1, " A worker's trials are retried by others after 6 missed beats."),
    "final_epochs": (
        0,
        " It is how many epochs best/ trains the best trial; 0 trains it to its best epoch in "
        "the search.",
    ),
}


def check(config: ConfigDict) -> list[Dimension]:
    """The space of a search that can work, or one clear `UserError`."""
    s = config.search
    config_checks.validate(config)
    for key, choices in (
        ("algorithm", study_lib.SAMPLERS),
        ("pruner", study_lib.PRUNERS),
        ("execution", EXECUTIONS),
    ):
        if s[key] not in choices:
            raise UserError(f"Unknown search.{key}={s[key]!r}; choose one of {', '.join(choices)}.")
    for key, (least, meaning) in _INTEGERS.items():
        if not (_is_integer(s[key]) and s[key] >= least):
            raise UserError(f"search.{key} must be an integer >= {least}, got {s[key]!r}.{meaning}")
    study_lib.require(s.algorithm)
    if s.objective not in config_lib.MONITORS:
        raise UserError(f"search.objective must be one of {', '.join(config_lib.MONITORS)}.")
    objectives.check(config)
    if config.data.num_validation <= 0 or config.grid or config.num_seeds != 1:
        raise UserError(
            "A search chooses on the validation split, one seed per trial, from its own space: "
            "set data.num_validation > 0, num_seeds=1 and no grid."
        )
    space = dimensions(s.space)
    searchable = _searchable(config)
    for d in space:
        if d.key not in searchable:
            with_trial(config, {d.key: d.values_or_ends()[0]})  # a key the config lacks: its error
            raise UserError(
                f"search.space cannot search {d.key}: a search's trials train side by side in one "
                "compiled program, so it searches the numbers a sweep varies and the widths its "
                f"model declares ({', '.join(searchable)}). Compare other choices as separate "
                "searches or runs (python -m experiments.compare)."
            )
        _check_values_of(config, d)
        for value in d.values_or_ends():
            config_checks.validate(with_trial(config, {d.key: value}))
    _budget(config, space)  # a grid lists discrete ranges only
    return space


def parameter_count(config: ConfigDict, hparams: dict[str, Any]) -> int:
    """The trainable parameters of a trial's model, counted from its shapes."""
    from fmnist_jax import models
    from fmnist_jax.reports import tables

    return tables.count_params(models.create(with_trial(config, hparams).model).shapes()["params"])


def _searchable(config: ConfigDict) -> tuple[str, ...]:
    """The keys a trial may set: the numbers a sweep varies, and the widths the model declares
    (`models.per_run`), which its trials train masked inside the widest."""
    from fmnist_jax import models

    models.check(config.model)
    return (*config_lib.SWEEPABLE, *models.searchable(config.model))


def _budget(config: ConfigDict, space: list[Dimension]) -> int:
    """How many trials the search trains: `search.trials`, or every point of a grid."""
    if config.search.algorithm != "grid":
        return config.search.trials
    return math.prod(d.size() for d in space)


def _check_values_of(config: ConfigDict, d: Dimension) -> None:
    """A dimension's values are of its key's kind: numbers (never a boolean or None) for a number,
    widths of one depth for widths (a single integer is one layer's width)."""
    if d.kind != "choice":
        return  # ranges hold numbers already
    values = d.values()
    if _is_widths(config, d.key):
        depths = {len(_as_widths(v)) for v in values}
        ok = len(depths) == 1 and all(
            _is_integer(w) and w >= 1 for v in values for w in _as_widths(v)
        )
        wanted = "layer widths of one depth, e.g. ((32, 64), (64, 128)) or (64, 128, 256)"
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        wanted = "numbers (not booleans, None or text)"
    if not ok:
        raise UserError(f"search.space's {d.key} choices {values!r} must be {wanted}.")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def with_trial(config: ConfigDict, hparams: dict[str, Any]) -> ConfigDict:
    """`config` with a trial's values; an integer for a tuple of widths is a one-layer width."""
    try:
        return config_lib.with_values(config, _as_config_values(config, hparams))
    except UserError as e:
        raise UserError(f"search.space: {e}") from None


def _as_config_values(config: ConfigDict, hparams: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _as_widths(value) if _is_widths(config, key) else value
        for key, value in hparams.items()
    }


def _as_widths(value: Any) -> tuple[int, ...]:
    """Widths as the config holds them: a tuple (a resumed search reads lists back)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _is_widths(config: ConfigDict, key: str) -> bool:
    try:
        return isinstance(config[key], (tuple, list))
    except KeyError:  # not a key: `with_values` says so
        return False


def run(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs this worker's part of the search `config.search` in `workdir` (resuming what is there)
    and, if it finished the study's last trial, trains the best one; returns search.json's content."""
    space = check(config)
    from fmnist_jax.reports import search_reports

    with workdir_lib.locked(workdir):
        _claim(config, workdir)
        finished = os.path.join(workdir, search_reports.SEARCH_FILE)
        if os.path.exists(finished):  # its reports are written: nothing to compile or redo
            logging.info("Workdir %s already holds this finished search.", workdir)
            return workdir_lib.read_json(finished)
        workdir_lib.name_holder(workdir)
        study = study_lib.Study(config, workdir, space)
        try:
            seconds = _search(config, space, workdir, study)
            trials = search_record.trials(config, study)
            result = _result(config, study, trials)
            result["search_seconds"] = seconds
            if result["best_run"] == os.path.join(study.place, "best"):
                best = next(t for t in trials if t["index"] == result["best"])
                result["best_epoch"], result["final"] = _train_best(config, workdir, best)
        except Exception as e:
            if _is_storage_error(e):
                raise study_lib.unreachable(config, e) from None
            raise
        finally:
            study.close()
        search_reports.write(workdir, result, config.plots)
        return result


def _is_storage_error(error: Exception) -> bool:
    import sqlalchemy

    return isinstance(error, sqlalchemy.exc.OperationalError)


def _claim(config: ConfigDict, workdir: str) -> None:
    """config.json of the search: a workdir holds one search, resumed only with the same config."""
    path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    wanted = workdir_lib.config_as_json(config)
    if os.path.exists(path):
        previous = workdir_lib.read_json(path)
        if not workdir_lib.describes_search(previous):
            raise UserError(
                f"Workdir {workdir} holds a training run, not a search: a search there would mix "
                "the two. Pass a new --workdir for the search."
            )
        differences = workdir_lib.config_differences(previous, wanted)
        workdir_lib.refuse_other_config(f"Search workdir {workdir}", differences)
        if previous == wanted:
            return
    workdir_lib.write_json(path, wanted)


def _largest(config: ConfigDict, space: list[Dimension]) -> dict[str, Any]:
    """Each searched key at its largest value, as the config holds it: the population's program."""
    return {
        d.key: run_axis.largest(
            [_as_config_values(config, {d.key: v})[d.key] for v in d.values_or_ends()]
        )
        for d in space
    }


def _search(
    config: ConfigDict, space: list[Dimension], workdir: str, study: study_lib.Study
) -> float:
    """Trains this worker's trials until the study's budget is spent and no trial of any worker
    trains or waits; the seconds it spent compiling and training, over every start of a resumed
    search."""
    start = time.perf_counter()
    slots = _slots(config, space, workdir)
    record = search_record.Record(
        config,
        study,
        slots,
        time.perf_counter() - start,
        functools.partial(parameter_count, config),
    )
    record.resume()
    saved_at = time.monotonic()

    def save() -> None:
        nonlocal saved_at
        if record.step and slots.checkpoints.latest_epoch() != record.step:
            slots.save(record.step, record.snapshot())
        saved_at = time.monotonic()

    try:
        while True:
            start = time.perf_counter()
            record.fill(_budget(config, space))
            interrupts.check(record.step + 1, slots.checkpoints, save=save)
            if all(n is None for n in record.slots):
                record.clock += time.perf_counter() - start
                if not record.others_running():
                    return record.clock
                time.sleep(min(config.search.heartbeat_seconds, 5))  # for a retried trial
                continue
            train, validation = slots.train_epoch()
            record.clock += time.perf_counter() - start
            record.judge(train, validation)
            record.step += 1
            record.log()
            if time.monotonic() - saved_at >= config.checkpoint.min_interval_seconds:
                save()  # a crash retrains at most this long; the study keeps what it recorded
    finally:
        slots.close()


EXECUTIONS = ("auto", "side_by_side", "own_widths")


def _slots(config: ConfigDict, space: list[Dimension], workdir: str) -> Any:
    """Where the trials train, by `search.execution` (`auto`: own widths on a CPU, side by side
    elsewhere), compiled: a `population.Population` of slots, or `population.OwnWidths`."""
    import jax

    from fmnist_jax import data
    from fmnist_jax.records import checkpoint
    from fmnist_jax.tuning import population

    s = config.search
    checkpoints = checkpoint.Checkpoints(os.path.join(workdir, "population"), keep=1)
    latest = checkpoints.directory("latest")
    splits = data.load(config.data)
    execution = s.execution
    if execution == "auto":
        execution = "own_widths" if jax.default_backend() == "cpu" else "side_by_side"
    slots = min(s.population, _budget(config, space))
    where = f"the study {study_lib.study_name(config, workdir)!r} in {s.storage or study_lib.DATABASE_FILE}"
    if execution == "own_widths":
        lanes = min(slots, len(os.sched_getaffinity(0)))
        logging.info(
            "%d trial(s) at once, each in a program of its own widths, one per core "
            "(search.execution=%r: on a CPU every slot side by side costs the widest trial's "
            "step); %s.",
            lanes,
            s.execution,
            where,
        )
        return population.OwnWidths(
            config,
            splits,
            functools.partial(_as_config_values, config),
            [d.key for d in space if _is_widths(config, d.key)],
            checkpoints,
            poll=lambda: interrupts.check_while_compiling(latest),
            lanes=lanes,
        )
    slots = population.Population(config, splits, _largest(config, space), slots, checkpoints)
    mesh = slots.program.placement.mesh.shape
    logging.info(
        "%d slots on a runs x data mesh of %d x %d devices; %s.",
        len(slots.epochs),
        mesh["runs"],
        mesh["data"],
        where,
    )
    slots.compile(poll=lambda: interrupts.check_while_compiling(latest))
    return slots


def _result(
    config: ConfigDict, study: study_lib.Study, trials: list[dict[str, Any]]
) -> dict[str, Any]:
    best = search_record.best_trial(trials, config)  # on two objectives: the front's best first
    if best is None:
        raise UserError(
            "Every trial of the search diverged (its loss became NaN or infinite): lower the "
            "learning rates in search.space, or set optimizer.grad_clip_norm (e.g. 1.0)."
        )
    if not best["learned"]:
        logging.warning(
            "No trial of the search learned: each one stayed at chance accuracy or its validation "
            "loss blew up (search.md says which). best/ trains trial %d all the same; widen "
            "search.space towards smaller learning rates, or train longer (search.max_epochs).",
            best["index"],
        )
    last = max(trials, key=lambda t: (t["finished"], t["index"]))
    front = (
        {
            "pareto": objectives.pareto_front(
                search_record.candidates(trials), search_record.maximizes(config)
            )
        }
        if config.search.objectives
        else {}
    )
    return {
        **front,
        "algorithm": config.search.algorithm,
        "pruner": config.search.pruner,
        "objective": config.search.objective,
        "objectives": list(objectives.of(config)),
        "space": [list(entry) for entry in config.search.space],
        "study": study.name,
        "trials": trials,
        "best": best["index"],
        # Trained by the worker that finished the study's last trial, in its own workdir.
        "best_run": os.path.join(last["workdir"], "best"),
    }


def _train_best(
    config: ConfigDict, workdir: str, best: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """(the best epoch, the summary of best/): the best trial trained `final_epochs` in best/,
    keeping the weights of its best epoch on validation, which are tested and exported.

    The tutorial trains the 50 epochs, then retrains to the best epoch. Training is deterministic,
    so with a schedule that does not depend on the run's length (the tutorial's constant rate) the
    retrain would repeat the first epochs bit for bit: restoring the best epoch gives the same
    model without training it twice. `final_epochs` 0 trains to the trial's best epoch in the
    search instead."""
    from fmnist_jax.training import train as train_lib

    trial_config = with_trial(config, best["hparams"])
    trial_config.search = config_lib.default().search
    if config.search.final_epochs:
        trial_config.num_epochs = config.search.final_epochs
        es = trial_config.early_stopping
        es.enabled, es.restore_best, es.min_delta = True, True, 0.0
        es.monitor, es.patience = config.search.objective, config.search.final_epochs
    else:
        curve = best[config.search.objective]
        trial_config.num_epochs = curve.index(search_record.best_value(config, best)) + 1
    summary = train_lib.train_and_evaluate(trial_config, os.path.join(workdir, "best"))
    return summary["restored_epoch"], {
        k: summary[k]
        for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_seconds")
    }
