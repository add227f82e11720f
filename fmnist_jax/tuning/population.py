"""A search's population: slots that train trials side by side in one compiled program.

Every slot trains inside the widest model of the search space, each trial with its own values of
the searched keys: the numbers the run axis carries (learning rate, dropout, ...; see `run_axis`)
and its hidden widths, the units beyond them masked off (`DenseStack`). A slot whose trial stopped
takes the next trial: its values change and a compiled program re-initializes its weights and
optimizer state from the trial's seed, so nothing compiles again. Each slot counts its own epochs,
so a refilled slot shuffles and trains exactly as a fresh trial would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import data, engine
from fmnist_jax.config import run_axis
from fmnist_jax.engine import initial_state
from fmnist_jax.engine import program as program_lib
from fmnist_jax.records import checkpoint


class Population:
    """`slots` trials training at once in `config`'s program with `largest` of each searched key
    (the values that shape it); its checkpoints go to `directory`."""

    def __init__(
        self,
        config: ConfigDict,
        splits: data.Splits,
        largest: dict[str, Any],
        slots: int,
        directory: str,
    ):
        axis = run_axis.RunAxis.of_members(config, [largest] * slots)
        self.program = program_lib.build(config, splits, axis=axis)
        # The searched keys' values of every slot, as the host last gave them.
        arrays = axis.arrays()
        self.values = {key: arrays[key] for key in largest}
        self.epochs = np.zeros(slots, np.int32)  # the epochs each slot's trial has trained
        self.state: engine.TrainState | None = None
        self.checkpoints = checkpoint.Checkpoints(directory, keep=1)
        eng = self.program.engine
        self._reinitialize = jax.jit(
            functools.partial(
                initial_state.reinitialize, self.program.model, eng.tx, eng.ema_decay > 0
            ),
            donate_argnums=(0,),
            out_shardings=self.program.placement.per_run,  # the state's own: one compile
        )

    def compile(self, poll: Callable[[], None]) -> float:
        """Compiles the programs and creates the slots' state; the seconds it took."""
        self.state, seconds = self.program.compile(poll)
        return seconds

    def assign(self, trials: dict[int, dict[str, Any]], fresh: bool = True) -> None:
        """Gives slots (slot -> the trial's hparams) their trials' values; `fresh` ones start from
        their initial state (a resumed search's slots keep the restored one)."""
        runner = self.program.runner
        for key, column in self.values.items():
            for slot, hparams in trials.items():
                column[slot] = hparams[key]
            runner.set_value(key, column)
        if fresh and trials:
            mask = np.isin(np.arange(len(self.epochs)), list(trials))
            self.state = self._reinitialize(
                self.state, self.program.placement.put(mask), self.program.init_keys, runner.values
            )
            self.epochs[mask] = 0

    def train_epoch(self) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        """One epoch of every slot, each at its own next epoch: (the training sums, the validation
        metrics), one per slot; empty slots train too, and their numbers mean nothing."""
        self.state, sums = self.program.runner.train_epoch(self.state, self.epochs + 1)
        train = sums.per_run()
        validation = self.program.evaluate(self.state.weights(), "val").per_run()
        self.epochs += 1
        return train, validation

    def save(self, step: int, meta: dict[str, Any]) -> None:
        """Starts saving the slots' state with `meta` (the search's own record) as checkpoint `step`."""
        state = self.state
        self.checkpoints.save(
            "latest",
            step,
            state.weights(),
            meta,
            {"step": state.step, "opt_state": state.opt_state},
        )

    def restore(self) -> tuple[int, dict[str, Any]] | None:
        """(step, meta) of the newest saved checkpoint, whose state the slots take; None if none."""
        state = self.state
        restored = self.checkpoints.restore_latest(
            state.weights(), {"step": state.step, "opt_state": state.opt_state}
        )
        if restored is None:
            return None
        step, weights, train, meta = restored
        self.state = engine.TrainState.restored(weights, train)
        return step, meta

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
