"""What the epoch loop carries from one epoch to the next, and the summary it ends with.

`LoopState` holds the train state, the metrics history, and with early stopping each run's stopper
and the weights it reports; a `latest/` checkpoint holds all of it, so a run resumes exactly.
`summarize` turns the finished loop into the run's summary: the reported weights' test metrics,
with the run's timings and facts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from fmnist_jax import engine
from fmnist_jax.engine import memory as memory_lib
from fmnist_jax.engine import program as program_lib
from fmnist_jax.records import checkpoint, metrics
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.records.metrics import EpochRow, Summary, aggregate
from fmnist_jax.shapes import PyTree
from fmnist_jax.training.early_stopping import EarlyStopping


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
    def start(cls, state: engine.TrainState, config: ConfigDict, num_runs: int) -> LoopState:
        if not config.early_stopping.enabled:
            return cls(state=state, stoppers=[], kept=None)
        es = config.early_stopping
        return cls(
            state=state,
            stoppers=[
                EarlyStopping(monitor=es.monitor, patience=es.patience, min_delta=es.min_delta)
                for _ in range(num_runs)
            ],
            kept=_keep(None, state.weights(), [True] * num_runs),
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
            state=engine.TrainState.restored(weights, train),
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

    def reported(self, config: ConfigDict, num_runs: int) -> tuple[dict[str, PyTree], list[int]]:
        """(the weights each run reports, the epoch they are from, per run)."""
        if not self.stoppers:
            return self.state.weights(), [self.epochs_done] * num_runs
        return self.kept, [
            s.best_epoch
            if config.early_stopping.restore_best
            else s.best_epoch + s.epochs_without_improvement
            for s in self.stoppers
        ]


def summarize(
    program: program_lib.Program,
    loop: LoopState,
    compile_seconds: float,
    num_params: int,
    memory: memory_lib.Memory,
) -> tuple[Summary, np.ndarray]:
    """The reported weights' test metrics, with the run's timings and facts (`memory`: what the
    compiled training call needs); and the reported run's test probabilities, for the reports."""
    config = program.config
    weights, epochs = loop.reported(config, program.axis.num_runs)
    examples = (
        program.axis.num_runs * loop.epochs_done * program.steps_per_epoch * config.batch_size
    )
    test_evaluation = program.evaluate(weights, "test")
    test = test_evaluation.per_run()
    val_runs = _reported_val(program, loop, weights, epochs)
    val = aggregate("val", val_runs) if val_runs else {}
    summary = {
        **aggregate("test", test),
        **val,
        "reported_run": metrics.best_run(val, config) if config.grid else 0,
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
    return summary, test_evaluation.run_probabilities(summary["reported_run"])


def _reported_val(
    program: program_lib.Program,
    loop: LoopState,
    weights: dict[str, PyTree],
    epochs: list[int],
) -> list[dict[str, float]]:
    """The reported weights' validation metrics, per run ([] without a validation split). Run r
    reports its weights of epoch `epochs[r]`, whose validation that epoch's row holds: read there,
    not evaluated again (a conv model's validation costs a good part of an epoch on CPU). Rows of
    releases without per-run values are evaluated again."""
    if "val" not in program.eval_sets:
        return []
    rows = {row["epoch"]: row for row in loop.history}
    if all("val_loss_seeds" in rows.get(epoch, {}) for epoch in epochs):
        return [
            {metric: rows[epoch][f"val_{metric}_seeds"][run] for metric in metrics.names()}
            for run, epoch in enumerate(epochs)
        ]
    return program.evaluate(weights, "val").per_run()


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
                metrics.run_name(config, seed),
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
