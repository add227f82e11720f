"""A search's own state: its trials, which trial each slot holds, and the sampler's asks and
tells in order, from which a resumed search replays the sampler to the same state; and the rules
that stop a trial after each epoch (divergence, early stopping, the pruner's rungs, the budget).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from absl import logging
from ml_collections import ConfigDict

from fmnist_jax.records import metrics
from fmnist_jax.training.early_stopping import EarlyStopping
from fmnist_jax.tuning import pruning
from fmnist_jax.tuning.search_space import Sampler

if TYPE_CHECKING:  # the population imports JAX
    from fmnist_jax.tuning.population import Population


class Record:
    """The search's own state: its trials, the slots' trials and the sampler's asks and tells, in
    order, from which a resumed search replays the sampler to the same state."""

    def __init__(self, config: ConfigDict, sampler: Sampler, compile_seconds: float):
        self.config, self.sampler = config, sampler
        self.trials: list[dict[str, Any]] = []
        self.slots: list[int | None] = []
        self.events: list[tuple[str, int]] = []
        self.step, self.clock = 0, compile_seconds

    def snapshot(self) -> dict[str, Any]:
        """The record as it stands now, as JSON values that nothing changes later: a checkpoint
        writes it in the background while the search goes on refilling slots, so it must not hold
        the live lists (its weights are the state after this epoch, and so must its record be)."""
        return json.loads(
            json.dumps(
                {
                    "trials": self.trials,
                    "slots": self.slots,
                    "events": self.events,
                    "clock": self.clock,
                }
            )
        )

    def log(self) -> None:
        done = [t for t in self.trials if t["stopped"] is not None]
        best = best_trial(done, self.config)
        logging.info(
            "Search epoch %d (%.1f s): %d trial(s) training, %d stopped%s.",
            self.step,
            self.clock,
            sum(i is not None for i in self.slots),
            len(done),
            f"; best so far trial {best['index']}, {self.config.search.objective} "
            f"{best['objective']:.4f}"
            if best
            else "",
        )

    def resume(self, slots: Population) -> None:
        """Takes the newest checkpoint's state, if any, and replays the sampler to it."""
        self.slots = [None] * len(slots.epochs)
        restored = slots.restore()
        if restored is None:
            return
        self.step, meta = restored
        self.trials, self.slots = meta["trials"], meta["slots"]
        self.clock += meta["clock"]  # this start's compile, and every earlier start's seconds
        self.events = [tuple(e) for e in meta["events"]]
        for kind, index in self.events:
            if kind == "ask":
                self.sampler.ask(1)  # the same proposal, as nothing else changed the sampler
            else:
                self._tell(self.trials[index])
        occupied = {slot: self.trials[i] for slot, i in enumerate(self.slots) if i is not None}
        slots.assign({slot: t["hparams"] for slot, t in occupied.items()}, fresh=False)
        for slot, trial in occupied.items():
            slots.epochs[slot] = trial["epochs"]
        logging.info(
            "Resuming the search after its epoch %d (%d trials).", self.step, len(self.trials)
        )

    def fill(self, slots: Population, budget: int) -> None:
        """Gives every free slot the sampler's next trial while the budget lasts."""
        s = self.config.search
        fresh = {}
        for slot, index in enumerate(self.slots):
            if index is not None or len(self.trials) >= budget:
                continue
            asked = self.sampler.ask(1)  # a grid's budget is its size: never exhausted here
            index = len(self.trials)
            bracket = pruning.bracket_of(index, s.pruner, s.max_epochs, s.factor)
            self.trials.append(
                {
                    "index": index,
                    "hparams": asked[0],
                    "bracket": bracket,
                    "epochs": 0,
                    "val_accuracy": [],
                    "val_loss": [],
                    "stopped": None,
                    "learned": None,
                    "objective": None,
                }
            )
            self.events.append(("ask", index))
            self.slots[slot] = index
            fresh[slot] = asked[0]
        slots.assign(fresh)

    def judge(self, train: list[dict[str, float]], validation: list[dict[str, float]]) -> None:
        """Records every running trial's epoch, then stops those that should stop."""
        running = [(slot, self.trials[i]) for slot, i in enumerate(self.slots) if i is not None]
        for slot, trial in running:
            trial["val_accuracy"].append(validation[slot]["accuracy"])
            trial["val_loss"].append(validation[slot]["loss"])
            trial["epochs"] += 1
            trial["seconds"] = self.clock
            finite = train[slot]["first_nonfinite_step"] < 0 and math.isfinite(
                validation[slot]["loss"]
            )
            trial["objective"] = best_value(self.config, trial) if finite else None
        for slot, trial in running:
            reason = self._reason_to_stop(trial)
            if reason:
                trial["stopped"] = reason
                trial["learned"] = learned(trial)
                self.slots[slot] = None
                self._tell(trial)
                self.events.append(("tell", trial["index"]))

    def _reason_to_stop(self, trial: dict[str, Any]) -> str | None:
        s, epochs = self.config.search, trial["epochs"]
        if trial["objective"] is None:
            return "diverged"
        first, last = trial["val_loss"][0], trial["val_loss"][-1]
        if last > _BLOWN_UP * first:
            return (
                f"failed to learn: validation loss {last:.3g}, over {_BLOWN_UP}x its first "
                f"epoch's {first:.3g}"
            )
        if early_stop_epoch(self.config, trial["val_accuracy"], trial["val_loss"]) == epochs:
            return "early stopping"
        if epochs >= s.max_epochs:
            return f"finished {epochs} epochs"
        if epochs in pruning.rungs(s.pruner, s.max_epochs, s.factor)[trial["bracket"]]:
            rivals = [
                best_value(self.config, t, epochs)
                for t in self.trials
                if t["bracket"] == trial["bracket"]
                and t["epochs"] >= epochs
                and t["objective"] is not None  # not diverged
            ]
            if not pruning.goes_on(
                best_value(self.config, trial, epochs), rivals, s.factor, maximizes(self.config)
            ):
                return f"pruned after {epochs} epochs"
        return None

    def _tell(self, trial: dict[str, Any]) -> None:
        self.sampler.tell(
            trial["hparams"],
            trial["objective"],
            trial[self.config.search.objective],
            pruned=trial["stopped"].startswith(("pruned", "failed")),
        )


# A validation loss this many times its first epoch's: the trial left the region it learned in.
_BLOWN_UP = 10


def learned(trial: dict[str, Any]) -> bool:
    """Whether a stopped trial learned: finite, its validation loss not blown up, and above chance
    accuracy at some epoch. A trial that did not is never best while another one learned."""
    return (
        trial["objective"] is not None
        and not trial["stopped"].startswith("failed")
        and max(trial["val_accuracy"]) > metrics.CHANCE_ACCURACY
    )


def maximizes(config: ConfigDict) -> bool:
    """Whether the search's objective is better higher (accuracy) or lower (loss)."""
    return config.search.objective == "val_accuracy"


def best_value(config: ConfigDict, trial: dict[str, Any], epochs: int | None = None) -> float:
    """A trial's objective: the best value of its curve (over its first `epochs`)."""
    curve = trial[config.search.objective][:epochs]
    return max(curve) if maximizes(config) else min(curve)


def best_trial(trials: list[dict[str, Any]], config: ConfigDict) -> dict[str, Any] | None:
    """The trial with the best objective, never a diverged one, nor one that did not learn while
    another did; None if every one diverged. (A trial of a release before verdicts has none.)"""
    finished = [t for t in trials if t["objective"] is not None]
    finished = [t for t in finished if t.get("learned") is not False] or finished
    sign = -1 if maximizes(config) else 1
    return min(finished, key=lambda t: sign * t["objective"], default=None)


def early_stop_epoch(
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
