"""A search's population: slots that train trials side by side in one compiled program.

Every slot trains inside the widest model of the search space, each trial with its own values of
the searched keys: the numbers the run axis carries (learning rate, dropout, ...; see `run_axis`)
and its hidden widths, the units beyond them masked off (`DenseStack`). A slot whose trial stopped
takes the next trial: its values change and a compiled program re-initializes its weights and
optimizer state from the trial's seed, so nothing compiles again. Each slot counts its own epochs,
so a refilled slot shuffles and trains exactly as a fresh trial would.
"""

from __future__ import annotations

import concurrent.futures
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
        self.busy = np.zeros(slots, bool)  # the slots that hold a trial
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
        self.busy[list(trials)] = True

    def free(self, slot: int) -> None:
        """The slot's trial ended: the program trains it on with the others, unread."""
        self.busy[slot] = False

    def train_epoch(
        self,
    ) -> tuple[list[dict[str, float] | None], list[dict[str, float] | None]]:
        """One epoch of every slot, each at its own next epoch: (the training sums, the validation
        metrics), one per slot, None for a free slot (it trains too, and its numbers mean
        nothing)."""
        self.state, sums = self.program.runner.train_epoch(self.state, self.epochs + 1)
        train = sums.per_run()
        validation = self.program.evaluate(self.state.weights(), "val").per_run()
        self.epochs += 1
        return (
            [t if busy else None for t, busy in zip(train, self.busy, strict=True)],
            [v if busy else None for v, busy in zip(validation, self.busy, strict=True)],
        )

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


class OwnWidths:
    """Trials each in a program of its own widths, `lanes` of them at once, one per thread: where
    slots side by side gain nothing (a compute-bound CPU, on which every slot costs the widest
    trial's step), a trial's own widths cost least, and one small trial's step leaves the other
    cores idle. Each widths' program compiles when a lane first needs it and is kept for the next
    trial of those widths. All lanes save to `checkpoints` together, its meta holding the values
    of each lane's trial. It offers the calls of a `Population` of `lanes` slots.

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
        lanes: int,
    ):
        self._config, self._splits, self._as_config = config, splits, as_config
        self._widths, self.checkpoints, self._poll = widths, checkpoints, poll
        self._idle: dict[str, list[Population]] = {}  # built programs no lane uses, by widths
        self.lanes: list[Population | None] = [None] * lanes
        self._keys: list[str | None] = [None] * lanes  # the widths of each lane's program
        self._values: list[dict[str, Any] | None] = [None] * lanes  # each busy lane's trial's
        self.epochs = np.zeros(lanes, np.int32)
        self._threads = concurrent.futures.ThreadPoolExecutor(lanes, "lane")

    def _key(self, hparams: dict[str, Any]) -> str:
        values = self._as_config(hparams)
        return json.dumps([values[k] for k in self._widths])

    def _take(self, lane: int, hparams: dict[str, Any]) -> bool:
        """Gives `lane` a program of the trial's widths; whether it was built just now, with this
        trial's values (so its state is the trial's initial state already)."""
        if self.lanes[lane] is not None:
            self._idle.setdefault(self._keys[lane], []).append(self.lanes[lane])
        key = self._key(hparams)
        idle = self._idle.get(key, [])
        new = not idle
        if new:  # compiled by the lane's thread, beside the other lanes' training
            values = self._as_config(hparams)
            population = Population(self._config, self._splits, values, 1, self.checkpoints)
        self.lanes[lane] = population if new else idle.pop()
        self._keys[lane], self._values[lane] = key, hparams
        return new

    def assign(self, trials: dict[int, dict[str, Any]], fresh: bool = True) -> None:
        for lane, hparams in trials.items():
            new = self._take(lane, hparams)
            # A program built for this trial holds its initial state: re-initializing would
            # compile one more program for nothing.
            self.lanes[lane].assign({0: hparams}, fresh and not new)
            self.epochs[lane] = self.lanes[lane].epochs[0]

    def free(self, lane: int) -> None:
        """The lane's trial ended: it trains nothing, and saves nothing, until it takes another."""
        self._values[lane] = None

    def train_epoch(
        self,
    ) -> tuple[list[dict[str, float] | None], list[dict[str, float] | None]]:
        """One epoch of every busy lane's trial, the lanes at once; a free lane's are None."""

        def run(lane: int) -> tuple[Any, Any]:
            population = self.lanes[lane]
            if self._values[lane] is None:
                return None, None
            if population.state is None:
                population.compile(self._poll)
            population.epochs[0] = self.epochs[lane]
            (train,), (validation,) = population.train_epoch()
            self.epochs[lane] = population.epochs[0]
            return train, validation

        results = list(self._threads.map(run, range(len(self.lanes))))
        return [r[0] for r in results], [r[1] for r in results]

    def save(self, step: int, meta: dict[str, Any]) -> None:
        """Saves the states of the lanes whose trial has trained; with none nothing (a resume then
        trains again from the checkpoint before, and takes what the study recorded since). A
        trial not yet trained starts afresh on resuming."""
        values = [
            v if v is not None and p.state is not None else None
            for v, p in zip(self._values, self.lanes, strict=True)
        ]
        states = {str(i): self.lanes[i].state for i, v in enumerate(values) if v is not None}
        if not states:
            return
        self.checkpoints.save(
            "latest",
            step,
            {i: s.weights() for i, s in states.items()},
            {**meta, "values": values},
            {i: {"step": s.step, "opt_state": s.opt_state} for i, s in states.items()},
        )

    def restore(self) -> tuple[int, dict[str, Any]] | None:
        def like(meta: dict[str, Any]) -> tuple[Any, Any] | None:
            busy = [i for i, v in enumerate(meta["values"]) if v is not None]
            if not busy:
                return None
            for i in busy:
                self._take(i, meta["values"][i])
                if self.lanes[i].state is None:
                    self.lanes[i].compile(self._poll)
            templates = {str(i): self.lanes[i].templates() for i in busy}
            return {i: t[0] for i, t in templates.items()}, {i: t[1] for i, t in templates.items()}

        restored = self.checkpoints.restore_latest(None, None, like=like)
        if restored is None:
            return None
        step, weights, train, meta = restored
        for i, lane_weights in (weights or {}).items():
            self.lanes[int(i)].state = engine.TrainState.restored(lane_weights, train[i])
        return step, meta

    def close(self) -> None:
        self._threads.shutdown()
        self.checkpoints.wait()
        self.checkpoints.close()
