"""`train_and_evaluate(config, workdir)`: the training loop, from config to summary.json.

Reads like what it does: build and compile the run's programs, restore the newest checkpoint or
start, then each epoch train, validate, record, log and save; then test, report and export. The
math is in `engine`, running it on devices in `runner`, what the loop carries in `loop_state`,
clean stops in `interrupts` and TensorBoard and figures in `reports`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import shlex
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from fmnist_jax import data, inference, interrupts, models
from fmnist_jax.config import checks as config_checks
from fmnist_jax.engine import TrainState, distributed
from fmnist_jax.engine import program as program_lib
from fmnist_jax.errors import UserError
from fmnist_jax.inference import export as export_lib
from fmnist_jax.records import checkpoint, metrics
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.records.metrics import EpochRow, Summary, aggregate
from fmnist_jax.reports import figure_workers, lines, tables
from fmnist_jax.reports.progress import Progress
from fmnist_jax.reports.run import RunReports
from fmnist_jax.shapes import IMAGE_SHAPE
from fmnist_jax.training import reduce_lr
from fmnist_jax.training.loop_state import LoopState, summarize


def train_and_evaluate(config: ConfigDict, workdir: str) -> Summary:
    """Trains `config` in `workdir`, or resumes it there, and evaluates it on the test split.

    Args:
        config: the run's settings, `fmnist_jax.config.default()` with changes (a config file's
            `get_config()`); checked before anything is written.
        workdir: the run's directory, locked while this runs; created if missing. Holds
            config.json, metrics.jsonl, summary.json, checkpoints/, plots/, tensorboard/, export/.

    Returns:
        The summary (also written to summary.json): test loss and accuracy (mean over the seeds,
        with `_std` and per-seed `_seeds`), epochs run, timings, parameters, backend. A workdir
        that already holds this finished run returns its summary without training; one whose run
        finished with fewer epochs trains it on to `config.num_epochs` (`workdir.trains_on`).

    Raises:
        UserError: a failure the user can fix (config, workdir, data, backend, divergence).
        interrupts.Stopped: SIGINT/SIGTERM asked the run to stop (command-line programs only).
    """
    config_checks.validate(config)
    if config.search.space:
        raise UserError(
            "This config describes a hyperparameter search (its search.space is set), which "
            "training would ignore: run it with python -m experiments.search --config=... "
            "--workdir=DIR, or train one run from a config without search.space."
        )
    models.check(config.model)  # a model name or setting that does not exist changes no workdir
    distributed.initialize(config.distributed)
    primary = distributed.is_primary()
    if primary and config.plots:
        figure_workers.start()  # importing matplotlib while the data loads and the programs compile
    splits = data.load(config.data)  # before the workdir changes: a missing dataset refuses the run
    with workdir_lib.locked(workdir) if primary else contextlib.nullcontext():
        return _train_and_evaluate(config, workdir, splits, primary)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays the same while the epochs run."""

    program: program_lib.Program
    splits: data.Splits
    workdir: str
    primary: bool  # process 0, which writes the files every process shares
    checkpoints: checkpoint.Checkpoints
    reports: RunReports

    @property
    def config(self) -> ConfigDict:
        return self.program.config


def _train_and_evaluate(
    config: ConfigDict, workdir: str, splits: data.Splits, primary: bool
) -> Summary:
    finished = workdir_lib.open_workdir(
        workdir, config, lambda: checkpoint.saved_config(workdir), primary
    )
    if finished is not None:
        logging.info(
            "Workdir %s already holds this finished run; not retraining. %s",
            workdir,
            lines.summary_line(finished, workdir, _runs(config)),
        )
        return finished

    # --- Build and compile: the data goes to the devices once, as uint8 ------------------------
    program = program_lib.build(config, splits)
    table, num_params = tables.model_table(program.model, IMAGE_SHAPE)
    logging.info("\n%s", table)
    reports = RunReports(workdir, primary)  # imports tensorboardX while the programs compile
    latest = checkpoint.directory(workdir, "latest")
    state, compile_seconds = program.compile(poll=lambda: interrupts.check_while_compiling(latest))
    memory = program.memory()
    _log_compiled(program, compile_seconds, memory.describe())
    if config.profile:
        _profile(program, state, workdir)

    # --- Restore the newest readable checkpoint, or start ---------------------------------------
    checkpoints = checkpoint.Checkpoints(
        workdir, config.checkpoint.keep, config.checkpoint.asynchronous
    )
    start = LoopState.start(state, config, program.axis.num_runs)
    loop = LoopState.restore(checkpoints, program, start, workdir)
    run = _Run(program, splits, workdir, primary, checkpoints, reports)
    _run_epochs(run, loop)

    # --- Test, report, export --------------------------------------------------------------------
    summary, test_probabilities = summarize(program, loop, compile_seconds, num_params, memory)
    _finish(run, loop, summary, test_probabilities)
    return summary


def _run_epochs(run: _Run, loop: LoopState) -> None:
    """The epochs from the first one not done to `num_epochs`, or until every run stopped early:
    train, validate, record, log, save."""
    config, program = run.config, run.program
    metrics_log = workdir_lib.MetricsLog(run.workdir, loop.history, run.primary)
    progress = (
        Progress(config.num_epochs, program.steps_per_epoch, loop.epochs_done)
        if run.primary
        else None
    )
    try:
        for epoch in range(loop.epochs_done + 1, config.num_epochs + 1):
            if loop.all_stopped():
                break  # every run stopped early (also on resuming after the stopping epoch)
            interrupts.check(epoch, run.checkpoints, save=lambda: _save(run, loop, ["latest"]))
            row = _train(run, loop, epoch, progress)
            if "val" in program.eval_sets:
                row.update(_validate(program, loop))
            loop.record(row, config)
            metrics_log.write(row)
            run.reports.epoch(row)
            line = lines.epoch_line(row, config.num_epochs)
            if progress is None:
                logging.info("%s", line)
            else:
                progress.epoch(row, line)
            _save(run, loop, _due(config, loop))
    finally:
        if progress is not None:
            progress.close()


def _log_compiled(program: program_lib.Program, compile_seconds: float, needs: str) -> None:
    """The compiled program's line: backend, steps per call, compile time, and what training
    `needs` on a device (`Memory.describe`)."""
    logging.info(
        "Backend %s (%d device(s), %d process(es)); %s per epoch, %s per call%s; "
        "compiled in %.1f s; training needs %s.",
        jax.default_backend(),
        jax.device_count(),
        jax.process_count(),
        lines.counted(program.steps_per_epoch, "step"),
        lines.counted(min(program.runner.steps_per_call, program.steps_per_epoch), "step"),
        " (unrolled)" if program.engine.unroll else "",
        compile_seconds,
        needs,
    )


def _profile(program: program_lib.Program, state: TrainState, workdir: str) -> None:
    profile_dir = os.path.join(workdir, "profile")
    traced = program.runner.trace(state, profile_dir)
    logging.info(
        "Wrote a profile of %d training steps to %s: tensorboard --logdir=%s "
        "(needs `pip install xprof`).",
        traced,
        profile_dir,
        shlex.quote(profile_dir),
    )


def _train(run: _Run, loop: LoopState, epoch: int, progress: Progress | None) -> EpochRow:
    """Trains epoch `epoch`; its row without validation. A non-finite loss raises `UserError`; in
    a sweep it is logged once, and that run goes on as NaN while the others train. With
    `progress` (the primary process), shows progress and stops mid-epoch when asked."""
    config, program = run.config, run.program
    learning_rate = _learning_rate(program, loop.history, epoch)
    start = time.perf_counter()
    hook = None if progress is None else _between_calls(run, progress, epoch)
    loop.state, sums = program.runner.train_epoch(loop.state, epoch, hook)
    train = sums.per_run()  # waits for the epoch
    seconds = time.perf_counter() - start
    for index, t in enumerate(train):
        if t["first_nonfinite_step"] >= 0 and not _diverged_before(loop.history, index):
            _diverged(run, epoch, t["first_nonfinite_step"], index)
    loop.train_seconds += seconds
    examples = program.axis.num_runs * program.steps_per_epoch * config.batch_size
    return {
        "epoch": epoch,
        **aggregate("train", train),
        "epoch_seconds": seconds,
        "examples_per_second": examples / seconds,
        **learning_rate,
    }


def _validate(program: program_lib.Program, loop: LoopState) -> dict[str, float | list[float]]:
    """The validation metrics of the weights the epoch ended with, for its row."""
    return aggregate("val", program.evaluate(loop.state.weights(), "val").per_run())


def _diverged(run: _Run, epoch: int, global_step: int, index: int) -> None:
    """Run `index`'s loss first became non-finite at `global_step`: a single run stops with a
    `UserError`; a sweep logs it and goes on."""
    steps_per_epoch = run.program.steps_per_epoch
    where = (
        f"Training diverged ({metrics.run_name(run.config, index)}): the loss became NaN or "
        f"infinite at epoch {epoch}, step {global_step - (epoch - 1) * steps_per_epoch + 1} of "
        f"{steps_per_epoch} (global step {global_step + 1})."
    )
    if not run.config.grid:
        raise UserError(
            f"{where} Training stopped there; the metrics of the earlier epochs are in "
            f"{run.workdir}/{workdir_lib.METRICS_FILE}. Lower optimizer.learning_rate, or set "
            "optimizer.grad_clip_norm (e.g. 1.0)."
        )
    logging.warning("%s The other runs of the sweep go on; it is reported as diverged.", where)


def _diverged_before(history: list[EpochRow], index: int) -> bool:
    return bool(history) and not np.isfinite(history[-1]["train_loss_seeds"][index])


def _between_calls(run: _Run, progress: Progress, epoch: int) -> Callable[[int | None], None]:
    """The primary process's hook between an epoch's compiled calls: the progress bar and, in a
    single-process run, a requested stop (several processes stop together, at epoch ends)."""

    def hook(steps_done: int | None) -> None:
        if steps_done is not None:
            progress.steps(epoch, steps_done)
            if jax.process_count() == 1:
                interrupts.check(epoch, run.checkpoints)

    return hook


def _learning_rate(
    program: program_lib.Program, history: list[EpochRow], epoch: int
) -> dict[str, float | list[float]]:
    """The learning rate epoch `epoch` trains at, for its metrics row: the schedule's at its last
    step, or with `reduce_lr` each run's from the validation history so far, which this sets (and
    logs where it dropped)."""
    config = program.config
    if not config.reduce_lr.enabled:
        return {"learning_rate": float(program.learning_rate(epoch * program.steps_per_epoch - 1))}
    initial = program.axis.arrays()["optimizer.learning_rate"].tolist()
    rates = reduce_lr.learning_rates(history, config, initial)
    before = history[-1]["learning_rate_seeds"] if history else initial  # the last epoch's rates
    r = config.reduce_lr
    for index, (old, new) in enumerate(zip(before, rates, strict=True)):
        if new != old:
            logging.info(
                "Epoch %d (%s): learning rate %.3g -> %.3g, as %s has not improved by more than "
                "%g for %s (reduce_lr).",
                epoch,
                metrics.run_name(config, index),
                old,
                new,
                r.monitor,
                r.min_delta,
                lines.counted(r.patience, "epoch"),
            )
    program.runner.set_value("optimizer.learning_rate", rates)
    return {"learning_rate": float(np.mean(rates)), "learning_rate_seeds": rates}


def _due(config: ConfigDict, loop: LoopState) -> list[str]:
    """The checkpoints the epoch just run writes: `latest/` after the last epoch, and every
    `checkpoint.every_epochs` once `checkpoint.min_interval_seconds` have passed since the previous
    one (a save costs CPU time that a fast model's epoch would notice); `best/` when validation
    accuracy improved. A stop between epochs saves the epoch just run (`interrupts.check`)."""
    epoch, history, every = loop.epochs_done, loop.history, config.checkpoint
    kinds = []
    on_time = time.monotonic() - loop.saved_at >= every.min_interval_seconds
    if jax.process_count() > 1:  # every process saves together: process 0's clock decides
        on_time = bool(multihost_utils.broadcast_one_to_all(np.int32(on_time)))
    if (
        epoch == config.num_epochs
        or loop.all_stopped()
        or (epoch % every.every_epochs == 0 and on_time)
    ):
        kinds.append("latest")
    if "val_accuracy" in history[-1] and history[-1]["val_accuracy"] > max(
        (r["val_accuracy"] for r in history[:-1]), default=-1.0
    ):
        kinds.append("best")
    return kinds


def _save(run: _Run, loop: LoopState, kinds: list[str]) -> None:
    """Starts writing the `kinds` checkpoints of the epochs run so far (`latest/` once per epoch)."""
    if loop.saved_epoch == loop.epochs_done:
        kinds = [k for k in kinds if k != "latest"]
    if not kinds:
        return  # most epochs of a fast model: nothing to build
    epoch = loop.epochs_done
    model = run.program.model_item(loop.state.weights())
    meta = loop.meta(run.config, run.splits.class_names)
    for kind in kinds:
        train = loop.train_item() if kind == "latest" else None
        run.checkpoints.save(kind, epoch, model, meta, train)
    if "latest" in kinds:
        loop.saved_epoch, loop.saved_at = epoch, time.monotonic()


def _finish(run: _Run, loop: LoopState, summary: Summary, test_probabilities: np.ndarray) -> None:
    """The `final/` checkpoint, the reports, the export and summary.json; then the last line."""
    config = run.config
    weights, epochs = loop.reported(config, run.program.axis.num_runs)
    final_model = run.program.model_item(weights)
    meta = {**loop.meta(config, run.splits.class_names), "summary": summary}
    reported = summary["reported_run"]
    run.checkpoints.save("final", epochs[reported], final_model, meta)
    try:
        if run.primary:  # the reports draw while the export lowers and the checkpoints write
            classifier = inference.Classifier.of_run(
                config,
                run.splits.class_names,
                epochs[reported],
                jax.device_get(final_model),
                reported,
            )
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                reports = pool.submit(
                    run.reports.finish,
                    config,
                    summary,
                    loop.history,
                    test_probabilities,
                    run.splits,
                )
                path = os.path.join(run.workdir, "export", export_lib.FILENAME)
                export_lib.export(classifier, path)
                reports.result()
    finally:  # a report that failed (a figure that cannot be written) still leaves them complete
        run.checkpoints.wait()
    run.checkpoints.close()
    if run.primary:
        workdir_lib.write_summary(run.workdir, summary)
    logging.info("%s", lines.summary_line(summary, run.workdir, _runs(config)))
    if not config.grid:  # a sweep's members are judged one by one in sweep.json
        _warn_if_not_learned(config, loop.history[-1]["train_loss"], summary["test_accuracy"])


def _warn_if_not_learned(config: ConfigDict, final_loss: float, test_accuracy: float) -> None:
    if final_loss >= metrics.UNIFORM_GUESS_LOSS or test_accuracy <= metrics.CHANCE_ACCURACY:
        logging.warning(
            "This run did not learn: final training loss %.4f (a uniform guess scores %.4f), test "
            "accuracy %.4f (chance is 0.1). The usual cause is the learning rate, "
            "optimizer.learning_rate=%g here (Adam's usual value is 1e-3, SGD's 0.01-0.1): too "
            "high and training jumps to chance, too low and it never leaves it.",
            final_loss,
            metrics.UNIFORM_GUESS_LOSS,
            test_accuracy,
            config.optimizer.learning_rate,
        )


def _runs(config: ConfigDict) -> str:
    """What a summary's spread is over: seeds, or a sweep's members and their seeds."""
    return "sweep runs" if config.grid else "seeds"
