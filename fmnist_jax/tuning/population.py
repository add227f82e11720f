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
import json
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
    (the values that shape it), saved to `checkpoints`."""

    def __init__(
        self,
        config: ConfigDict,
        splits: data.Splits,
        largest: dict[str, Any],
        slots: int,
        checkpoints: checkpoint.Checkpoints,
    ):
        axis = run_axis.RunAxis.of_members(config, [largest] * slots)
        self.program = program_lib.build(config, splits, axis=axis)
        # The searched keys' values of every slot, as the host last gave them.
        arrays = axis.arrays()
        self.values = {key: arrays[key] for key in largest}
        self.epochs = np.zeros(slots, np.int32)  # the epochs each slot's trial has trained
        self.state: engine.TrainState | None = None
        self.checkpoints = checkpoints
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

    def templates(self) -> tuple[Any, Any]:
        """The shapes of what a checkpoint of these slots holds: (weights, training state)."""
        state = self.state
        return state.weights(), {"step": state.step, "opt_state": state.opt_state}

    def restore(self) -> tuple[int, dict[str, Any]] | None:
        """(step, meta) of the newest saved checkpoint, whose state the slots take; None if none."""
        restored = self.checkpoints.restore_latest(*self.templates())
        if restored is None:
            return None
        step, weights, train, meta = restored
        self.state = engine.TrainState.restored(weights, train)
        return step, meta

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()


class OneByOne:
    """One trial at a time, in a program of its own widths: where slots side by side gain nothing
    (a compute-bound CPU, on which every slot costs the widest trial's step), a trial's own widths
    cost least. Each widths' program compiles once, when a trial first needs it, and is kept for
    the next trial of those widths. They all save to `checkpoints`, whose meta holds the values of
    the trial whose state it is. It offers the calls of a `Population` of one slot.

    `as_config(hparams)` gives a trial's values as the config holds them; `widths` are the
    searched keys that shape the program."""

    def __init__(
        self,
        config: ConfigDict,
        splits: data.Splits,
        as_config: Callable[[dict[str, Any]], dict[str, Any]],
        widths: list[str],
        checkpoints: checkpoint.Checkpoints,
        poll: Callable[[], None],
    ):
        self._config, self._splits, self._as_config = config, splits, as_config
        self._widths, self.checkpoints, self._poll = widths, checkpoints, poll
        self._built: dict[str, Population] = {}
        self.current: Population | None = None
        self._values: dict[str, Any] | None = None  # the current trial's
        self._idle = np.zeros(1, np.int32)

    @property
    def epochs(self) -> np.ndarray:
        return self.current.epochs if self.current else self._idle

    def _population(self, hparams: dict[str, Any]) -> Population:
        values = self._as_config(hparams)
        key = json.dumps([values[k] for k in self._widths])
        if key not in self._built:
            population = Population(self._config, self._splits, values, 1, self.checkpoints)
            population.compile(self._poll)
            self._built[key] = population
        return self._built[key]

    def assign(self, trials: dict[int, dict[str, Any]], fresh: bool = True) -> None:
        if trials:
            (hparams,) = trials.values()
            self.current, self._values = self._population(hparams), hparams
            self.current.assign(trials, fresh)

    def train_epoch(self) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
        return self.current.train_epoch()

    def save(self, step: int, meta: dict[str, Any]) -> None:
        self.current.save(step, {**meta, "values": self._values})

    def restore(self) -> tuple[int, dict[str, Any]] | None:
        def like(meta: dict[str, Any]) -> tuple[Any, Any] | None:
            if meta["slots"][0] is None:  # its trial had ended: nothing to train on
                return None
            self.current = self._population(meta["values"])
            return self.current.templates()

        restored = self.checkpoints.restore_latest(None, None, like=like)
        if restored is None:
            return None
        step, weights, train, meta = restored
        if weights is not None:
            self.current.state = engine.TrainState.restored(weights, train)
        return step, meta

    def close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
