"""`train_and_evaluate(config, workdir)`: the training loop, from config to summary.json.

Reads like what it does: build the run's programs (`program.build`), restore the newest checkpoint
or start, run the epochs (train, validate, log, early-stop, checkpoint), then test and report. The
math lives in `engine` and its assembly in `program`; this file orders the epochs and does the I/O.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import os
import shlex
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from fmnist_jax import (
    checkpoint,
    data,
    distributed,
    engine,
    inference,
    models,
    records,
    reduce_lr,
    stopping,
)
from fmnist_jax import config as config_lib
from fmnist_jax import export as export_lib
from fmnist_jax import program as program_lib
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.early_stopping import EarlyStopping
from fmnist_jax.errors import UserError
from fmnist_jax.records import EpochRow, Summary, over_runs
from fmnist_jax.reports import figure_workers, lines
from fmnist_jax.reports.progress import Progress
from fmnist_jax.shapes import PyTree

if TYPE_CHECKING:
    from fmnist_jax.reports.board import Board

PLOTS_DIR = lines.PLOTS_DIR
# tensorboardX takes 0.25 s to import: a thread loads it while the programs compile and the first
# epochs train, and the loop never waits for it (`_Board`). matplotlib lives in the figure workers.
_UNIFORM_GUESS_LOSS = float(np.log(10))  # cross-entropy of predicting 1/10 for every class
_CHANCE_ACCURACY = 0.15  # 10 balanced classes: 0.1, plus the noise of a few thousand examples


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
        stopping.Stopped: SIGINT/SIGTERM asked the run to stop (command-line programs only).
    """
    try:
        return _train_and_evaluate(config, workdir)
    finally:
        workdir_lib.unlock(workdir)  # taken by open_workdir


def _train_and_evaluate(config: ConfigDict, workdir: str) -> Summary:
    config_lib.validate(config)
    models.check(config.model)  # a model name or setting that does not exist changes no workdir
    distributed.initialize(config.distributed)
    primary = distributed.is_primary()
    if primary and config.plots:
        figure_workers.start()  # importing matplotlib while the data loads and the programs compile
    splits = data.load(config.data)  # before the workdir changes: a missing dataset refuses the run
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
    table, num_params = program.model_table()
    logging.info("\n%s", table)
    board_imported = _import_board_meanwhile()
    state, compile_seconds = program.compile(poll=lambda: _check_stop_while_compiling(workdir))
    _log_compiled(program, compile_seconds)
    if config.profile:
        _profile(program, state, workdir)

    # --- Restore the newest readable checkpoint, or start ---------------------------------------
    checkpoints = checkpoint.Checkpoints(
        workdir, config.checkpoint.keep, config.checkpoint.asynchronous
    )
    loop = LoopState.restore(checkpoints, program, LoopState.start(state, config), workdir)
    metrics_log = workdir_lib.MetricsLog(workdir, loop.history, primary)
    board = _Board(board_imported, workdir, primary)

    # --- Epochs ----------------------------------------------------------------------------------
    progress = (
        Progress(config.num_epochs, program.steps_per_epoch, loop.epochs_done) if primary else None
    )
    try:
        for epoch in range(loop.epochs_done + 1, config.num_epochs + 1):
            if loop.all_stopped():
                break  # every run stopped early (also on resuming after the stopping epoch)
            _check_stop(
                epoch,
                workdir,
                checkpoints,
                save=lambda: _save(program, loop, checkpoints, splits.class_names, ["latest"]),
            )
            row = _train_epoch(program, loop, epoch, workdir, checkpoints, progress)
            loop.record(row, config)
            metrics_log.write(row)
            board.epoch(row)
            if progress is None:
                logging.info("%s", lines.epoch_line(row, config.num_epochs))
            else:
                progress.epoch(row, lines.epoch_line(row, config.num_epochs))
            _save(program, loop, checkpoints, splits.class_names, _due(config, loop))
    finally:
        if progress is not None:
            progress.close()

    # --- Test and report -------------------------------------------------------------------------
    summary, test_probabilities = _test(program, loop, compile_seconds, num_params)
    _finish(
        program,
        loop,
        summary,
        test_probabilities,
        checkpoints,
        board.opened(),
        splits,
        workdir,
        primary,
    )
    return summary


@dataclasses.dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next; a `latest/` checkpoint holds it all."""

    state: engine.TrainState
    # One per run with early stopping; none without.
    stoppers: list[EarlyStopping]
    # With early stopping, the weights each run reports: its best epoch's (restore_best) or its
    # stopping epoch's; None without early stopping.
    kept: dict[str, PyTree] | None
    history: list[EpochRow] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    # The newest `latest/` checkpoint this process wrote or resumed from, and when it wrote it.
    saved_epoch: int = 0
    saved_at: float = dataclasses.field(default_factory=time.monotonic)

    @classmethod
    def start(cls, state: engine.TrainState, config: ConfigDict) -> LoopState:
        if not config.early_stopping.enabled:
            return cls(state=state, stoppers=[], kept=None)
        es = config.early_stopping
        return cls(
            state=state,
            stoppers=[
                EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta)
                for _ in range(config_lib.num_runs(config))
            ],
            kept=_keep(None, state.weights(), [True] * config_lib.num_runs(config)),
        )

    @classmethod
    def restore(
        cls,
        checkpoints: checkpoint.Checkpoints,
        program: program_lib.Program,
        start: LoopState,
        workdir: str,
    ) -> LoopState:
        """The newest readable `latest/` checkpoint's loop state, or `start` when there is none."""
        restored = checkpoints.restore_latest(
            program.model_item(start.state.weights()), start.train_item()
        )
        if restored is None:
            return start
        epoch, weights, train, meta = restored
        logging.info(
            "Resuming after epoch %d from %s.", epoch, checkpoint.directory(workdir, "latest")
        )
        saved = meta["early_stopping"]  # one stopper per run; a single one in older checkpoints
        stoppers = [EarlyStopping(**s) for s in (saved if isinstance(saved, list) else [saved])]
        return cls(
            state=engine.TrainState(
                step=train["step"],
                params=weights["params"],
                batch_stats=weights["batch_stats"],
                opt_state=train["opt_state"],
                ema_params=weights.get("ema_params", {}),
            ),
            stoppers=stoppers if start.stoppers else [],
            kept=train["early_stopping_best"] or None,
            history=meta["history"],
            train_seconds=meta["train_seconds"],
            saved_epoch=epoch,
        )

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def all_stopped(self) -> bool:
        return bool(self.stoppers) and all(s.should_stop for s in self.stoppers)

    def record(self, row: EpochRow, config: ConfigDict) -> None:
        """Adds the epoch's row; with early stopping, updates each run's stopper and kept weights."""
        self.history.append(row)
        if self.stoppers:
            take = _update_stoppers(self.stoppers, row, row["epoch"], config)
            self.kept = _keep(self.kept, self.state.weights(), take)

    def train_item(self) -> dict[str, PyTree]:
        """What a `latest/` checkpoint keeps beside the model to resume training."""
        return {
            "step": self.state.step,
            "opt_state": self.state.opt_state,
            "early_stopping_best": self.kept or {},
        }

    def meta(self, config: ConfigDict, class_names: tuple[str, ...]) -> dict[str, Any]:
        """A checkpoint's JSON: the loop's history and stoppers, the config and class names."""
        return {
            "epoch": self.epochs_done,
            "history": list(self.history),  # a copy: asynchronous saves serialize it later
            "train_seconds": self.train_seconds,
            "early_stopping": [dataclasses.asdict(s) for s in self.stoppers],
            "class_names": list(class_names),
            "config": workdir_lib.config_as_json(config),
        }

    def reported(self, config: ConfigDict) -> tuple[dict[str, PyTree], list[int]]:
        """(the weights each run reports, the epoch they are from, per run)."""
        if not self.stoppers:
            return self.state.weights(), [self.epochs_done] * config_lib.num_runs(config)
        return self.kept, [
            s.best_epoch
            if config.early_stopping.restore_best
            else s.best_epoch + s.epochs_without_improvement
            for s in self.stoppers
        ]


def _import_board_meanwhile() -> concurrent.futures.Future:
    """Starts importing `reports.board` (tensorboardX, 0.1 s) in a thread; the module's future."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="import-board")
    imported = pool.submit(importlib.import_module, "fmnist_jax.reports.board")
    pool.shutdown(wait=False)
    return imported


class _Board:
    """The run's TensorBoard writer, opened once the import-board thread has imported
    tensorboardX: epochs that end before that (all of them, for a fast model on a GPU) are written
    then, so the loop never waits for the import."""

    def __init__(self, imported: concurrent.futures.Future, workdir: str, primary: bool):
        self._imported, self._workdir, self._primary = imported, workdir, primary
        self._board: Board | None = None
        self._pending: list[EpochRow] = []

    def epoch(self, row: EpochRow) -> None:
        self._pending.append(row)
        if self._imported.done():
            self.opened()

    def opened(self) -> Board:
        """The writer, with every epoch so far written (waits for the import if it must)."""
        if self._board is None:
            self._board = self._imported.result().Board(self._workdir, self._primary)
        for row in self._pending:
            self._board.epoch(row)
        self._pending.clear()
        return self._board


def _log_compiled(program: program_lib.Program, compile_seconds: float) -> None:
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
        program.memory().describe(),
    )


def _profile(program: program_lib.Program, state: engine.TrainState, workdir: str) -> None:
    profile_dir = os.path.join(workdir, "profile")
    traced = program.runner.trace(state, profile_dir)
    logging.info(
        "Wrote a profile of %d training steps to %s: tensorboard --logdir=%s "
        "(needs `pip install xprof`).",
        traced,
        profile_dir,
        shlex.quote(profile_dir),
    )


def _train_epoch(
    program: program_lib.Program,
    loop: LoopState,
    epoch: int,
    workdir: str,
    checkpoints: checkpoint.Checkpoints,
    progress: Progress | None,
) -> EpochRow:
    """Trains epoch `epoch` and validates it. A non-finite loss raises `UserError`; in a sweep it
    is logged once, and that run goes on as NaN while the others train. With `progress` (the
    primary process), shows progress and stops mid-epoch when asked."""
    config = program.config
    learning_rate = _learning_rate(program, loop.history, epoch)
    start = time.perf_counter()
    hook = None if progress is None else _between_calls(progress, epoch, workdir, checkpoints)
    loop.state, sums = program.runner.run(loop.state, epoch, hook)
    train = sums.per_run()  # waits for the epoch
    seconds = time.perf_counter() - start
    for run, t in enumerate(train):
        if t["first_nonfinite_step"] >= 0 and not _diverged_before(loop.history, run):
            where = _divergence(
                epoch, t["first_nonfinite_step"], program.steps_per_epoch, config, run
            )
            if not config.grid:
                raise UserError(
                    f"{where} Training stopped there; the metrics of the earlier epochs are in "
                    f"{workdir}/{workdir_lib.METRICS_FILE}. Lower optimizer.learning_rate, or set "
                    "optimizer.grad_clip_norm (e.g. 1.0)."
                )
            logging.warning(
                "%s The other runs of the sweep go on; it is reported as diverged.", where
            )
    loop.train_seconds += seconds
    examples = config_lib.num_runs(config) * program.steps_per_epoch * config.batch_size
    row = {
        "epoch": epoch,
        **over_runs("train", train),
        "epoch_seconds": seconds,
        "examples_per_second": examples / seconds,
        **learning_rate,
    }
    if "val" in program.eval_sets:
        row.update(over_runs("val", program.evaluate(loop.state.weights(), "val").per_run()))
    return row


def _learning_rate(
    program: program_lib.Program, history: list[EpochRow], epoch: int
) -> dict[str, float | list[float]]:
    """The learning rate epoch `epoch` trains at, for its metrics row: the schedule's at its last
    step, or with `reduce_lr` each run's from the validation history so far, which this sets (and
    logs where it dropped)."""
    config = program.config
    if not config.reduce_lr.enabled:
        return {"learning_rate": float(program.learning_rate(epoch * program.steps_per_epoch - 1))}
    initial = program_lib.run_arrays(config)["optimizer.learning_rate"].tolist()
    rates = reduce_lr.learning_rates(history, config, initial)
    before = history[-1]["learning_rate_seeds"] if history else initial  # the last epoch's rates
    r = config.reduce_lr
    for run, (old, new) in enumerate(zip(before, rates, strict=True)):
        if new != old:
            logging.info(
                "Epoch %d (%s): learning rate %.3g -> %.3g, as %s has not improved by more than "
                "%g for %s (reduce_lr).",
                epoch,
                records.run_name(config, run),
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
    one (a save costs ~0.1 s of CPU: an epoch of the seed MLP is 0.5 s); `best/` when validation
    accuracy improved. A stop between epochs saves the epoch just run (see `_check_stop`)."""
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


def _save(
    program: program_lib.Program,
    loop: LoopState,
    checkpoints: checkpoint.Checkpoints,
    class_names: tuple[str, ...],
    kinds: list[str],
) -> None:
    """Starts writing the `kinds` checkpoints of the epochs run so far (`latest/` once per epoch)."""
    if loop.saved_epoch == loop.epochs_done:
        kinds = [k for k in kinds if k != "latest"]
    if not kinds:
        return  # most epochs of a fast model: nothing to build
    config, epoch = program.config, loop.epochs_done
    model, meta = program.model_item(loop.state.weights()), loop.meta(config, class_names)
    for kind in kinds:
        checkpoints.save(kind, epoch, model, meta, loop.train_item() if kind == "latest" else None)
    if "latest" in kinds:
        loop.saved_epoch, loop.saved_at = epoch, time.monotonic()


def _test(
    program: program_lib.Program, loop: LoopState, compile_seconds: float, num_params: int
) -> tuple[Summary, np.ndarray]:
    """The reported weights' test metrics, with the run's timings and facts; and the reported
    run's test probabilities, for the reports."""
    config = program.config
    weights, epochs = loop.reported(config)
    examples = (
        config_lib.num_runs(config) * loop.epochs_done * program.steps_per_epoch * config.batch_size
    )
    test = program.evaluate(weights, "test")
    memory = program.memory()
    val = _reported_val(program, loop, weights, epochs)
    summary = {
        **over_runs("test", test.per_run()),
        **val,
        "reported_run": records.best_run(val, config) if config.grid else 0,
        "best_val_accuracy": max(
            (r["val_accuracy"] for r in loop.history if "val_accuracy" in r), default=None
        ),
        "epochs_run": loop.epochs_done,
        "restored_epoch": epochs[0],
        "restored_epoch_seeds": epochs,
        "train_seconds": loop.train_seconds,
        "compile_seconds": compile_seconds,
        "examples_per_second": examples / loop.train_seconds,
        "num_params": num_params,
        "memory_mib": memory.needed / 2**20,
        "memory_mib_per_run": memory.per_run / 2**20,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
    }
    return summary, test.run_probabilities(summary["reported_run"])


def _reported_val(
    program: program_lib.Program,
    loop: LoopState,
    weights: dict[str, PyTree],
    epochs: list[int],
) -> dict[str, Any]:
    """The reported weights' validation metrics. Run r reports its weights of epoch `epochs[r]`,
    whose validation that epoch's row holds: read there, not evaluated again (a CNN validation
    costs ~0.8 s on CPU). Rows of releases without per-run values are evaluated again."""
    if "val" not in program.eval_sets:
        return {}
    rows = {row["epoch"]: row for row in loop.history}
    if all("val_loss_seeds" in rows.get(epoch, {}) for epoch in epochs):
        per_run = [
            {metric: rows[epoch][f"val_{metric}_seeds"][run] for metric in ("loss", "accuracy")}
            for run, epoch in enumerate(epochs)
        ]
        return over_runs("val", per_run)
    return over_runs("val", program.evaluate(weights, "val").per_run())


def _finish(
    program: program_lib.Program,
    loop: LoopState,
    summary: Summary,
    test_probabilities: np.ndarray,
    checkpoints: checkpoint.Checkpoints,
    board: Board,
    splits: data.Splits,
    workdir: str,
    primary: bool,
) -> None:
    """The `final/` checkpoint, plots, TensorBoard, export and summary.json; then the last line."""
    config = program.config
    weights, epochs = loop.reported(config)
    final_model = program.model_item(weights)
    meta = {**loop.meta(config, splits.class_names), "summary": summary}
    run = summary["reported_run"]
    checkpoints.save("final", epochs[run], final_model, meta)
    try:
        if primary:  # the plots draw while the export lowers and the checkpoints finish writing
            classifier = inference.Classifier(
                config=config_lib.with_values(config, config_lib.run_values(config, run)),
                class_names=splits.class_names,
                epoch=epochs[run],
                variables=inference.one_run(jax.device_get(final_model), run),
            )
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                reports = pool.submit(
                    _write_reports,
                    workdir,
                    board,
                    config,
                    summary,
                    loop.history,
                    test_probabilities,
                    splits,
                )
                export_lib.export(classifier, os.path.join(workdir, "export", export_lib.FILENAME))
                reports.result()
    finally:  # a report that failed (a figure that cannot be written) still leaves them complete
        checkpoints.wait()
    checkpoints.close()
    if primary:
        workdir_lib.write_summary(workdir, summary)
    logging.info("%s", lines.summary_line(summary, workdir, _runs(config)))
    final_loss = loop.history[-1]["train_loss"]
    if config.grid:
        return  # a sweep's members are judged one by one in sweep.json
    if final_loss >= _UNIFORM_GUESS_LOSS or summary["test_accuracy"] <= _CHANCE_ACCURACY:
        logging.warning(
            "This run did not learn: final training loss %.4f (a uniform guess scores %.4f), test "
            "accuracy %.4f (chance is 0.1). The usual cause is the learning rate, "
            "optimizer.learning_rate=%g here (Adam's usual value is 1e-3, SGD's 0.01-0.1): too "
            "high and training jumps to chance, too low and it never leaves it.",
            final_loss,
            _UNIFORM_GUESS_LOSS,
            summary["test_accuracy"],
            config.optimizer.learning_rate,
        )


def _runs(config: ConfigDict) -> str:
    """What a summary's spread is over: seeds, or a sweep's members and their seeds."""
    return "sweep runs" if config.grid else "seeds"


def _check_stop(
    epoch: int,
    workdir: str,
    checkpoints: checkpoint.Checkpoints,
    save: Callable[[], None] | None = None,
) -> None:
    """Raises `stopping.Stopped` saying what is saved, after the in-flight checkpoints finish, if
    SIGINT/SIGTERM asked for a stop (in every process, or in none, when there are several).

    Between epochs, `save` first writes the `latest/` checkpoint of the epochs run, if it is not
    written yet; mid-epoch (`save` None) the newest written one is what resumes."""
    mid_epoch = save is None
    requested = stopping.requested()
    if jax.process_count() > 1:
        requested = int(np.max(multihost_utils.process_allgather(np.int32(requested or 0))))
    if not requested:
        return
    if save is not None:
        save()
    checkpoints.wait()
    saved = checkpoints.latest_epoch()
    where = f"during epoch {epoch}" if mid_epoch else f"before epoch {epoch}"
    kept = (
        f"epoch {saved} is saved in {checkpoint.directory(workdir, 'latest')}"
        if saved
        else "no epoch was saved yet"
    )
    raise stopping.Stopped(
        requested,
        f"Stopped by {signal.Signals(requested).name} {where}: {kept}. Re-running the same command resumes from there.",
    )


def _check_stop_while_compiling(workdir: str) -> None:
    """Raises `stopping.Stopped` if SIGINT/SIGTERM asked for a stop while the programs compile,
    before this process trained or saved anything. Several processes stop together at the first
    epoch's end instead: one that left now would leave the others waiting for it."""
    requested = stopping.requested()
    if requested and jax.process_count() == 1:
        raise stopping.Stopped(
            requested,
            f"Stopped by {signal.Signals(requested).name} while compiling, before any training: "
            f"nothing was lost. Re-running the same command resumes from the newest checkpoint in "
            f"{checkpoint.directory(workdir, 'latest')}, or starts afresh where there is none.",
        )


def _between_calls(
    progress: Progress, epoch: int, workdir: str, checkpoints: checkpoint.Checkpoints
) -> Callable[[int | None], None]:
    """The primary process's hook between an epoch's compiled calls: the progress bar and, in a
    single-process run, a requested stop (several processes stop together, at epoch ends)."""

    def hook(steps_done: int | None) -> None:
        if steps_done is not None:
            progress.steps(epoch, steps_done)
            if jax.process_count() == 1:
                _check_stop(epoch, workdir, checkpoints)

    return hook


def _divergence(
    epoch: int, global_step: int, steps_per_epoch: int, config: ConfigDict, run: int
) -> str:
    """Where run `run`'s loss first became non-finite, naming the run by its seed (and values)."""
    step_in_epoch = global_step - (epoch - 1) * steps_per_epoch + 1
    return (
        f"Training diverged ({records.run_name(config, run)}): the loss became NaN or infinite at "
        f"epoch {epoch}, step {step_in_epoch} of {steps_per_epoch} (global step {global_step + 1})."
    )


def _diverged_before(history: list[EpochRow], run: int) -> bool:
    return bool(history) and not np.isfinite(history[-1]["train_loss_seeds"][run])


def _write_reports(
    workdir: str,
    board: Board,
    config: ConfigDict,
    result: dict[str, Any],
    history: list[dict[str, Any]],
    probabilities: np.ndarray,
    splits: data.Splits,
) -> None:
    """The run's plots, unless `config.plots` is off, and its last TensorBoard entries."""
    images = _draw_figures(workdir, history, probabilities, splits) if config.plots else {}
    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in config_lib.flatten(workdir_lib.config_as_json(config)).items()
    }
    board.finish(hparams, result, images)


def _draw_figures(
    workdir: str, history: list[dict[str, Any]], probabilities: np.ndarray, splits: data.Splits
) -> dict[str, np.ndarray]:
    """<workdir>/plots/ from the reported weights' test probabilities, drawn by the figure workers
    (the slowest first); returns TensorBoard's images by tag."""
    report = inference.report(probabilities, splits.test_labels, splits.class_names)
    names, images, labels = splits.class_names, splits.test_images, splits.test_labels
    first = np.arange(10)
    figures = [  # `plots` functions, which name the PNGs; the slowest first: the workers end together
        (
            "confusion_matrix",
            {"matrix": np.array(report["confusion_matrix"]), "class_names": names},
        ),
        (
            "confident_mistakes",
            {
                "images": images,
                "labels": labels,
                "probabilities": probabilities,
                "class_names": names,
            },
        ),
        ("learning_curves", {"history": history}),
        ("per_class_accuracy", {"accuracies": report["per_class_accuracy"]}),
        (
            "training_images",
            {
                "images": splits.train_images[:25],
                "labels": splits.train_labels[:25],
                "class_names": names,
            },
        ),
    ]
    plots_dir = os.path.join(workdir, PLOTS_DIR)
    tasks: list[figure_workers.Task] = [
        (name, kwargs, os.path.join(plots_dir, f"{name}.png")) for name, kwargs in figures
    ]
    samples = {
        "images": images[first],
        "labels": labels[first],
        "probabilities": probabilities[first],
        "class_names": names,
        "indices": first,
    }
    *_, sample_pixels = figure_workers.draw([*tasks, ("prediction_grid", samples, None)])
    return {"test/sample_predictions": sample_pixels}


def _update_stoppers(
    stoppers: list[EarlyStopping], row: dict[str, Any], epoch: int, config: ConfigDict
) -> list[bool]:
    """Feeds each still-running seed's monitored value to its stopper; returns, per seed, whether the
    weights it reports become this epoch's (an improvement, or every running epoch without restore_best)."""
    monitor = config.early_stopping.monitor
    values = row[f"{monitor}_seeds"]
    take = []
    for seed, (stopper, value) in enumerate(zip(stoppers, values, strict=False)):
        if stopper.should_stop:
            take.append(False)
            continue
        improved = stopper.update(epoch, value)
        take.append(improved or not config.early_stopping.restore_best)
        if stopper.should_stop:
            logging.info(
                "Early stopping (%s) at epoch %d: best %s %.4f at epoch %d.",
                records.run_name(config, seed),
                epoch,
                monitor,
                stopper.best,
                stopper.best_epoch,
            )
    return take


def _keep(kept: dict[str, Any] | None, current: dict[str, Any], take: list[bool]) -> dict[str, Any]:
    """Per run, `current` where `take`, else `kept`, in new buffers (the next training call donates
    those of `current`)."""
    mask = jnp.array(take)
    return jax.tree.map(
        lambda k, c: jnp.where(mask.reshape((-1,) + (1,) * (c.ndim - 1)), c, k),
        kept or current,
        current,
    )
