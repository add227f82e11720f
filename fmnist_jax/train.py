"""`train_and_evaluate(config, workdir)`: the training loop, from config to summary.json.

Reads top to bottom: config and workdir, data, model, optimizer, compile, epochs (train, validate,
log, early-stop), final test evaluation, summary. The math lives in `engine`; this file only
orders it and does the I/O.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from fmnist_jax import (
    checkpoint,
    data,
    distributed,
    engine,
    inference,
    models,
    optim,
    stopping,
)
from fmnist_jax import config as config_lib
from fmnist_jax import export as export_lib
from fmnist_jax import workdir as workdir_lib
from fmnist_jax.augment import Augment
from fmnist_jax.early_stopping import EarlyStopping
from fmnist_jax.errors import UserError
from fmnist_jax.reports import tables
from fmnist_jax.reports.progress import Progress
from fmnist_jax.shapes import IMAGE_SHAPE

if TYPE_CHECKING:
    from fmnist_jax.reports.board import Board

PLOTS_DIR = "plots"
# The reports' libraries (matplotlib, tensorboardX) take ~1 s to import: a thread loads them while
# the programs compile, and the loop imports them from there.
_REPORT_MODULES = ("fmnist_jax.reports.plots", "fmnist_jax.reports.board")


def _epoch_line(row: dict[str, Any], num_epochs: int) -> str:
    val = (
        f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
        if "val_loss" in row
        else ""
    )
    return (
        f"epoch {row['epoch']:>3}/{num_epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}{val}"
        f"  {row['epoch_seconds']:.2f} s  {row['examples_per_second']:,.0f} ex/s  lr {row['learning_rate']:.2e}"
    )


def _over_runs(split: str, per_run: list[dict[str, float]]) -> dict[str, Any]:
    """`{split}_loss`/`_accuracy`: the mean over the runs (seeds), with `_std` and per-seed `_seeds`."""
    out = {}
    for metric in ("loss", "accuracy"):
        values = np.array([r[metric] for r in per_run])
        out.update(
            {
                f"{split}_{metric}": float(values.mean()),
                f"{split}_{metric}_std": float(values.std()),
                f"{split}_{metric}_seeds": values.tolist(),
            }
        )
    return out


_UNIFORM_GUESS_LOSS = float(np.log(10))  # cross-entropy of predicting 1/10 for every class
_CHANCE_ACCURACY = 0.15  # 10 balanced classes: 0.1, plus the noise of a few thousand examples


def _summary_line(result: dict[str, Any], workdir: str) -> str:
    """The run's last line: test metrics, epochs, training time, and where its reports are."""
    seeds = result["test_accuracy_seeds"]
    spread = (
        f" (std over {len(seeds)} seeds {result['test_accuracy_std']:.4f})"
        if len(seeds) > 1
        else ""
    )  # wording only
    return (
        f"Test loss {result['test_loss']:.4f}, test accuracy {result['test_accuracy']:.4f}{spread} ({result['epochs_run']} epochs, "
        f"{result['train_seconds']:.1f} s training). Figures in {os.path.join(workdir, PLOTS_DIR)}; tensorboard --logdir={workdir}."
    )


def _check_stop(
    epoch: int, workdir: str, checkpoints: checkpoint.Checkpoints, mid_epoch: bool = False
) -> None:
    """Raises `stopping.Stopped` saying what is saved, after the in-flight checkpoints finish, if
    SIGINT/SIGTERM asked for a stop (in every process, or in none, when there are several)."""
    requested = stopping.requested()
    if jax.process_count() > 1:
        requested = int(np.max(multihost_utils.process_allgather(np.int32(requested or 0))))
    if not requested:
        return
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


def _between_calls(
    progress: Progress, epoch: int, workdir: str, checkpoints: checkpoint.Checkpoints
) -> Callable[[int | None], None]:
    """The primary process's hook between an epoch's compiled calls: the progress line and, in a
    single-process run, a requested stop (several processes stop together, at epoch ends)."""

    def hook(steps_done: int | None) -> None:
        progress(steps_done)
        if steps_done is not None and jax.process_count() == 1:
            _check_stop(epoch, workdir, checkpoints, mid_epoch=True)

    return hook


def _diverged(
    epoch: int, global_step: int, steps_per_epoch: int, workdir: str, seed: int
) -> UserError:
    step_in_epoch = global_step - (epoch - 1) * steps_per_epoch + 1
    return UserError(
        f"Training diverged (seed {seed}): the loss became NaN or infinite at epoch {epoch}, step {step_in_epoch} of "
        f"{steps_per_epoch} (global step {global_step + 1}). Training stopped there; the metrics of the "
        f"earlier epochs are in {workdir}/{workdir_lib.METRICS_FILE}. Lower optimizer.learning_rate, "
        "or set optimizer.grad_clip_norm (e.g. 1.0)."
    )


def _write_reports(
    workdir: str,
    board: Board,
    config: ConfigDict,
    result: dict[str, Any],
    history: list[dict[str, Any]],
    classifier: inference.Classifier,
    splits: data.Splits,
) -> None:
    """The run's plots (<workdir>/plots/) and its last TensorBoard entries, from the final weights."""
    from fmnist_jax.reports import plots

    probabilities = classifier.predict_proba(splits.test_images)
    report = inference.report(probabilities, splits.test_labels, splits.class_names)
    plots.write_run_plots(
        os.path.join(workdir, PLOTS_DIR),
        history,
        report,
        splits.test_images,
        splits.test_labels,
        probabilities,
        splits.train_images,
        splits.train_labels,
        splits.class_names,
    )
    samples = plots.prediction_grid(
        splits.test_images, splits.test_labels, probabilities, splits.class_names, np.arange(10)
    )
    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v)
        for k, v in workdir_lib.flatten(workdir_lib.config_as_json(config)).items()
    }
    board.finish(hparams, result, {"test/sample_predictions": samples})


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
                "Early stopping (seed %d) at epoch %d: best %s %.4f at epoch %d.",
                config.seed + seed,
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


def _reported_epoch(stopper: EarlyStopping, restore_best: bool) -> int:
    """The epoch whose weights a seed reports: its best, or the last it trained before stopping."""
    return (
        stopper.best_epoch
        if restore_best
        else stopper.best_epoch + stopper.epochs_without_improvement
    )


def make_engine(
    config: ConfigDict,
    model: nn.Module,
    normalizer: engine.Normalizer,
    steps_per_epoch: int,
    backend: str,
) -> tuple[engine.Engine, optax.Schedule, int]:
    """The config's optimizer and compiled math as they are built for `backend` (pass a model created
    for it), with the learning-rate schedule and the training steps per compiled call."""
    learning_rate = optim.schedule(
        config.schedule, config.optimizer.learning_rate, steps_per_epoch, config.num_epochs
    )
    has_convolution = engine.uses_convolution(model, IMAGE_SHAPE)
    steps_per_call, unroll = engine.plan_calls(config.steps_per_call, backend, has_convolution)
    eng = engine.Engine(
        model=model,
        tx=optim.optimizer(config.optimizer, learning_rate),
        normalizer=normalizer,
        label_smoothing=config.loss.label_smoothing,
        unroll=unroll,
        compiler_options=engine.compiler_options(backend),
        compute_dtype=config.dtype,
        num_runs=config.num_seeds,
        augment=Augment(**config.augment),
        loop_runs=engine.seed_loop(backend, has_convolution),
        ema_decay=config.ema_decay,
        test_time_flip=config.test_time_flip,
    )
    return eng, learning_rate, steps_per_call


def lower_for(
    config: ConfigDict, platform: str, num_train: int = 55_000
) -> dict[str, jax.stages.Lowered]:
    """The training call and the evaluation program of `config` exactly as a run on `platform` ("cpu",
    "cuda", "tpu") builds them, lowered on this machine without compiling: proves that every backend's
    programs build, with that backend's choices (steps per call, unrolling, seed loop, pooling ops)."""
    model = models.create(config.model, platform)
    normalizer = (
        engine.Normalizer(np.zeros(IMAGE_SHAPE, np.float32), np.ones(IMAGE_SHAPE, np.float32))
        if config.data.standardize
        else engine.Normalizer()
    )
    steps_per_epoch = num_train // config.batch_size
    eng, _, steps_per_call = make_engine(config, model, normalizer, steps_per_epoch, platform)
    init_key, _, dropout_key = engine.seed_keys(config.seed, config.num_seeds)
    state = engine.state_shapes(model, eng.tx, init_key, IMAGE_SHAPE, ema=config.ema_decay > 0)
    steps = min(steps_per_call, steps_per_epoch)
    images = jax.ShapeDtypeStruct((num_train, *IMAGE_SHAPE), jnp.uint8)
    labels = jax.ShapeDtypeStruct((num_train,), jnp.int32)
    indices = jax.ShapeDtypeStruct((config.num_seeds, steps, config.batch_size), jnp.int32)
    batches = engine.eval_batches(10_000, config.eval_batch_size)  # the test split in one call
    train_call = jax.jit(eng.train_program(), donate_argnums=(0, 1)).trace(
        state, engine.Sums.zeros(config.num_seeds), images, labels, indices, dropout_key
    )
    weights = state.weights()
    eval_call = jax.jit(eng.eval_program()).trace(
        engine.eval_params(weights),
        weights["batch_stats"],
        engine.Sums.zeros(config.num_seeds),
        jax.ShapeDtypeStruct((*batches, *IMAGE_SHAPE), jnp.uint8),
        jax.ShapeDtypeStruct(batches, jnp.int32),
        jax.ShapeDtypeStruct(batches, jnp.bool_),
    )
    return {
        "train": train_call.lower(lowering_platforms=(platform,)),
        "eval": eval_call.lower(lowering_platforms=(platform,)),
    }


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir`, or resumes it there, and evaluates it on the test split.

    Args:
        config: the run's settings, `fmnist_jax.config.default()` with changes (a config file's
            `get_config()`); checked before anything is written.
        workdir: the run's directory, locked while this runs; created if missing. Holds
            config.json, metrics.jsonl, summary.json, checkpoints/, plots/, tensorboard/, export/.

    Returns:
        The summary (also written to summary.json): test loss and accuracy (mean over the seeds,
        with `_std` and per-seed `_seeds`), epochs run, timings, parameters, backend. A workdir
        that already holds this finished run returns its summary without training.

    Raises:
        UserError: a failure the user can fix (config, workdir, data, backend, divergence).
        stopping.Stopped: SIGINT/SIGTERM asked the run to stop (command-line programs only).
    """
    try:
        return _train_and_evaluate(config, workdir)
    finally:
        workdir_lib.unlock(workdir)  # taken by open_workdir


def _train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    # --- Config and workdir -------------------------------------------------------------------
    config_lib.validate(config)
    distributed.initialize(config.distributed)
    primary = distributed.is_primary()
    placement = distributed.DataParallel.over_all_devices()
    backend = jax.default_backend()
    model = models.create(config.model, backend)
    splits = data.load(config.data)  # before the workdir changes: a missing dataset refuses the run
    finished = workdir_lib.open_workdir(
        workdir, config, lambda: checkpoint.saved_config(workdir), primary
    )
    if finished is not None:
        logging.info(
            "Workdir %s already holds this finished run; not retraining. %s",
            workdir,
            _summary_line(finished, workdir),
        )
        return finished

    # --- Data: on the devices once, as uint8 ---------------------------------------------------
    normalizer = engine.Normalizer.fit(splits.train_images, config.data.standardize)
    eval_splits = {"test": (splits.test_images, splits.test_labels)}
    if len(splits.val_labels):
        eval_splits["val"] = (splits.val_images, splits.val_labels)
    eval_sets = engine.EvalSet.create_all(eval_splits, config.eval_batch_size, placement)
    test_set, val_set = eval_sets["test"], eval_sets.get("val")
    num_train = len(splits.train_labels)
    steps_per_epoch = num_train // config.batch_size

    # --- Model, optimizer, state ---------------------------------------------------------------
    table, num_params = tables.model_table(model, IMAGE_SHAPE)
    logging.info("\n%s", table)
    eng, learning_rate, steps_per_call = make_engine(
        config, model, normalizer, steps_per_epoch, backend
    )
    init_key, shuffle_key, dropout_key = engine.seed_keys(config.seed, config.num_seeds)
    init_args = (model, eng.tx, init_key, IMAGE_SHAPE, config.ema_decay > 0)
    runner = engine.EpochRunner(
        eng,
        splits.train_images,
        splits.train_labels,
        config.batch_size,
        steps_per_call,
        shuffle_key,
        dropout_key,
        placement,
    )

    # XLA releases the GIL while it compiles: the training programs compile beside the initial
    # state and the evaluation programs, and the reports' libraries load meanwhile.
    threading.Thread(
        target=lambda: [importlib.import_module(m) for m in _REPORT_MODULES], name="import-reports"
    ).start()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        training_compiled = pool.submit(
            runner.compile, placement.abstract(engine.state_shapes(*init_args))
        )
        state = placement.put(engine.init_states(*init_args))
        one_per_call_shape = {s.call_shape: s for s in eval_sets.values()}.values()
        for split in one_per_call_shape:  # compiles each evaluation program once
            eng.evaluate(state.weights(), split).per_run()
        training_compiled.result()
    compile_seconds = time.perf_counter() - start
    logging.info(
        "Backend %s (%d device(s), %d process(es)); %d steps per epoch, %s steps per call%s; compiled in %.1f s.",
        backend,
        jax.device_count(),
        jax.process_count(),
        steps_per_epoch,
        min(steps_per_call, steps_per_epoch),
        " (unrolled)" if eng.unroll else "",
        compile_seconds,
    )

    if config.profile:
        profile_dir = os.path.join(workdir, "profile")
        traced = runner.trace(state, profile_dir)
        logging.info(
            "Wrote a profile of %d training steps to %s: tensorboard --logdir=%s (needs `pip install xprof`).",
            traced,
            profile_dir,
            profile_dir,
        )

    # --- Checkpoints: resume where the last good one left off ---------------------------------
    checkpoints = checkpoint.Checkpoints(
        workdir, config.checkpoint.keep, config.checkpoint.asynchronous
    )
    early_stopping = config.early_stopping.enabled
    stoppers = [
        EarlyStopping(
            config.early_stopping.monitor,
            config.early_stopping.patience,
            config.early_stopping.min_delta,
        )
        for _ in range(config.num_seeds)
    ]
    # With early stopping, the weights each seed reports: its best epoch's (restore_best) or its stopping epoch's.
    kept = _keep(None, state.weights(), [True] * config.num_seeds) if early_stopping else None

    def model_item(weights: dict[str, Any]) -> dict[str, Any]:
        return {**weights, "normalizer": normalizer.as_tree()}

    def train_item() -> dict[str, Any]:
        return {"step": state.step, "opt_state": state.opt_state, "early_stopping_best": kept or {}}

    history, train_seconds, first_epoch = [], 0.0, 1
    restored = checkpoints.restore_latest(model_item(state.weights()), train_item())
    if restored is not None:
        epoch, weights, saved_train, saved = restored
        state = engine.TrainState(
            saved_train["step"],
            weights["params"],
            weights["batch_stats"],
            saved_train["opt_state"],
            weights.get("ema_params", {}),
        )
        history, train_seconds, first_epoch = saved["history"], saved["train_seconds"], epoch + 1
        # One stopper per seed; checkpoints written before per-seed early stopping hold a single one.
        saved_stoppers = (
            saved["early_stopping"]
            if isinstance(saved["early_stopping"], list)
            else [saved["early_stopping"]]
        )
        stoppers = [EarlyStopping(**s) for s in saved_stoppers]
        kept = saved_train["early_stopping_best"] or None
        logging.info(
            "Resuming after epoch %d from %s.", epoch, checkpoint.directory(workdir, "latest")
        )
    metrics_log = workdir_lib.MetricsLog(workdir, history, primary)
    from fmnist_jax.reports import board as board_lib  # loaded by the import-reports thread

    board = board_lib.Board(workdir, primary)

    def meta(epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "history": list(history),  # a copy: asynchronous saves serialize it later
            "train_seconds": train_seconds,
            "early_stopping": [dataclasses.asdict(s) for s in stoppers],
            "class_names": list(splits.class_names),
            "config": workdir_lib.config_as_json(config),
        }

    def all_stopped() -> bool:
        return early_stopping and all(s.should_stop for s in stoppers)

    # --- Epochs -------------------------------------------------------------------------------
    for epoch in range(first_epoch, config.num_epochs + 1):
        if all_stopped():
            break  # resumed after the stopping epoch's checkpoint
        _check_stop(epoch, workdir, checkpoints)
        start = time.perf_counter()
        progress = Progress(epoch, config.num_epochs, steps_per_epoch, config.batch_size)
        hook = _between_calls(progress, epoch, workdir, checkpoints) if primary else None
        state, sums = runner.run(state, epoch, hook)
        train = sums.per_run()  # waits for the epoch
        seconds = time.perf_counter() - start
        for seed, t in enumerate(train):
            if t["first_nonfinite_step"] >= 0:
                raise _diverged(
                    epoch, t["first_nonfinite_step"], steps_per_epoch, workdir, config.seed + seed
                )
        train_seconds += seconds
        row = {
            "epoch": epoch,
            **_over_runs("train", train),
            "epoch_seconds": seconds,
            "examples_per_second": config.num_seeds * steps_per_epoch * config.batch_size / seconds,
            "learning_rate": float(learning_rate(epoch * steps_per_epoch - 1)),  # no device read
        }
        if val_set is not None:
            row.update(_over_runs("val", eng.evaluate(state.weights(), val_set).per_run()))
        history.append(row)
        metrics_log.write(row)
        board.epoch(row)
        logging.info("%s", _epoch_line(row, config.num_epochs))
        if early_stopping:
            kept = _keep(kept, state.weights(), _update_stoppers(stoppers, row, epoch, config))

        last = epoch == config.num_epochs or all_stopped()
        if epoch % config.checkpoint.every_epochs == 0 or last:
            checkpoints.save(
                "latest", epoch, model_item(state.weights()), meta(epoch), train_item()
            )
        if val_set is not None and row["val_accuracy"] > max(
            (r["val_accuracy"] for r in history[:-1]), default=-1.0
        ):
            checkpoints.save("best", epoch, model_item(state.weights()), meta(epoch))
        if last:
            break
    epochs_run = len(history)
    final_weights = kept if early_stopping else state.weights()
    reported_epochs = [
        _reported_epoch(s, config.early_stopping.restore_best) if early_stopping else epochs_run
        for s in stoppers
    ]

    # --- Test and summary ---------------------------------------------------------------------
    test = _over_runs("test", eng.evaluate(final_weights, test_set).per_run())
    result = {
        **test,
        "best_val_accuracy": max(
            (r["val_accuracy"] for r in history if "val_accuracy" in r), default=None
        ),
        "epochs_run": epochs_run,
        "restored_epoch": reported_epochs[0],
        "restored_epoch_seeds": reported_epochs,
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "examples_per_second": config.num_seeds
        * epochs_run
        * steps_per_epoch
        * config.batch_size
        / train_seconds,
        "num_params": num_params,
        "backend": backend,
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
    }
    final_model = model_item(final_weights)
    checkpoints.save(
        "final", reported_epochs[0], final_model, {**meta(epochs_run), "summary": result}
    )
    if primary:  # the plots draw while the export lowers and the checkpoints finish writing
        classifier = inference.Classifier(
            config,
            splits.class_names,
            reported_epochs[0],
            inference.first_run(jax.device_get(final_model)),
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            reports = pool.submit(
                _write_reports, workdir, board, config, result, history, classifier, splits
            )
            os.makedirs(os.path.join(workdir, "export"), exist_ok=True)
            export_lib.export(classifier, os.path.join(workdir, "export", export_lib.FILENAME))
            reports.result()
    checkpoints.wait()
    checkpoints.close()
    if primary:
        workdir_lib.write_summary(workdir, result)
    logging.info("%s", _summary_line(result, workdir))
    if (
        history[-1]["train_loss"] >= _UNIFORM_GUESS_LOSS
        or test["test_accuracy"] <= _CHANCE_ACCURACY
    ):
        logging.warning(
            "This run did not learn: final training loss %.4f (a uniform guess scores %.4f), test accuracy %.4f "
            "(chance is 0.1). The usual cause is the learning rate, optimizer.learning_rate=%g here (Adam's usual value "
            "is 1e-3, SGD's 0.01-0.1): too high and training jumps to chance, too low and it never leaves it.",
            history[-1]["train_loss"],
            _UNIFORM_GUESS_LOSS,
            test["test_accuracy"],
            config.optimizer.learning_rate,
        )
    return result
