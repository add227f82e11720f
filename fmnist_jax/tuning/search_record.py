"""One worker's part of a search: which study trial each slot holds, each epoch's results written
to the study, and the rules that stop a trial after an epoch (divergence, a blown-up loss, early
stopping, `max_epochs`, the study's pruner).

Everything recorded lives in the study (`study`); the worker's checkpoint, written at most every
`checkpoint.min_interval_seconds` and at a stop, holds only its slots' trial numbers and epochs and
the trials it took. After a crash the study may be epochs ahead of that checkpoint: the slots then
train those epochs again, and what the study already holds (epochs' results, verdicts, the trials
this worker took after the checkpoint) is taken as it is instead of being written twice, so the
resumed search is the one never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from absl import logging
from ml_collections import ConfigDict

from fmnist_jax.records import metrics
from fmnist_jax.training.early_stopping import EarlyStopping
from fmnist_jax.tuning import objectives
from fmnist_jax.tuning import study as study_lib

if TYPE_CHECKING:  # the population imports JAX
    from fmnist_jax.tuning.population import OwnWidths, Population

CURVES = ("val_accuracy", "val_loss")


class Record:
    """The slots' trials of one worker, and what it writes to the study after each epoch."""

    def __init__(
        self,
        config: ConfigDict,
        study: study_lib.Study,
        population: Population | OwnWidths,
        compile_seconds: float,
        parameter_count: Callable[[dict[str, Any]], int],
    ):
        self.config, self.study, self.population = config, study, population
        self._parameter_count = parameter_count
        self._two = len(objectives.of(config)) == 2
        self.slots: list[int | None] = []  # the study trial number each slot trains
        self._trials: dict[int, Any] = {}  # the Optuna trials this worker reports to
        self._spare: list[int] = []  # trials this worker took after its last checkpoint
        self.asked: list[int] = []  # every trial this worker took, in order
        self.step, self.clock = 0, compile_seconds

    def snapshot(self) -> dict[str, Any]:
        """What the checkpoint of the slots' weights holds besides them."""
        return {
            "slots": list(self.slots),
            "epochs": self.population.epochs.tolist(),
            "asked": list(self.asked),
            "clock": self.clock,
        }

    def resume(self) -> None:
        """Takes the newest checkpoint's slots, if any, and the trials this worker took after it
        (the study may hold any number of epochs beyond the checkpoint)."""
        slots = self.population
        self.slots = [None] * len(slots.epochs)
        restored = slots.restore()
        if restored is not None:
            self.step, meta = restored
            self.slots, self.asked = meta["slots"], meta["asked"]
            self.clock += meta["clock"]
            trials = self.study.trials()
            occupied = {s: n for s, n in enumerate(self.slots) if n is not None}
            slots.assign(
                {
                    s: study_lib.decode(self.study.space, trials[n].params)
                    for s, n in occupied.items()
                },
                fresh=False,
            )
            for slot in occupied:
                slots.epochs[slot] = meta["epochs"][slot]
            logging.info("Resuming the search after its epoch %d.", self.step)
        self._spare = [n for n in self.study.taken_by_me() if n not in self.asked]
        # Beating before any stale check: its running trials are this worker's still.
        held = [n for n in self.slots if n is not None]
        self._trials = {n: self.study.own(n) for n in [*held, *self._spare]}

    def fill(self, budget: int) -> None:
        """Gives every free slot a trial: one asked before a stop, a retried one, or a new one
        while the study's budget lasts."""
        self.study.fail_stale()
        fresh = {}
        for slot, number in enumerate(self.slots):
            if number is not None:
                continue
            if self._spare:
                trial = self._trials[self._spare.pop(0)]
            else:
                trial = self.study.ask(budget)
                if trial is None:
                    break
            self.slots[slot], self._trials[trial.number] = trial.number, trial
            self.asked.append(trial.number)
            fresh[slot] = study_lib.decode(self.study.space, trial.params)
            if self._two:  # the second objective, known before it trains
                trial.set_user_attr("params", self._parameter_count(fresh[slot]))
        self.population.assign(fresh)

    def others_running(self) -> bool:
        """Whether trials of other workers still train or wait (a retry may come to this one)."""
        return self.study.unfinished()

    def judge(
        self, train: list[dict[str, float] | None], validation: list[dict[str, float] | None]
    ) -> None:
        """Writes every running trial's epoch to the study, then stops those that should stop."""
        from optuna.trial import TrialState

        frozen = self.study.trials()
        for slot, number in enumerate(self.slots):
            if number is None:
                continue
            held, epoch = frozen[number], int(self.population.epochs[slot])
            verdict = held.user_attrs.get("stopped")
            recorded = len(held.user_attrs.get("curves", {"val_loss": []})["val_loss"])
            if held.state != TrialState.RUNNING and verdict is None:  # retried elsewhere
                self._free(slot)
            elif verdict is not None and epoch < recorded:
                pass  # training again towards the verdict it reached before a stop
            elif held.state != TrialState.RUNNING:
                self._free(slot)
            elif verdict is not None:  # written, but not told, just before a stop
                self._tell(slot, verdict, held.user_attrs["curves"])
            else:
                curves = self._record(held, train[slot], validation[slot], epoch)
                reason = self._reason_to_stop(self._trials[number], curves, train[slot])
                if reason:
                    self._trials[number].set_user_attr("stopped", reason)
                    self._tell(slot, reason, curves)

    def _record(
        self,
        held: Any,
        train: dict[str, float],
        validation: dict[str, float],
        epoch: int,
    ) -> dict[str, Any]:
        """The trial's curves up to `epoch`, written to the study unless it holds them already."""
        curves = held.user_attrs.get("curves", {k: [] for k in CURVES})
        if len(curves["val_loss"]) >= epoch:  # written before a restart
            return {k: v[:epoch] if k in CURVES else v for k, v in curves.items()}
        curves = {k: [*curves[k][: epoch - 1], validation[k.removeprefix("val_")]] for k in CURVES}
        curves["seconds"] = self.clock
        trial = self._trials[held.number]
        trial.set_user_attr("curves", curves)
        value = curves[self.config.search.objective][-1]
        # Optuna takes intermediate values of one objective only.
        if not self._two and train["first_nonfinite_step"] < 0 and math.isfinite(value):
            trial.report(value, epoch)
        return curves

    def _reason_to_stop(
        self, trial: Any, curves: dict[str, Any], train: dict[str, float]
    ) -> str | None:
        s, epochs = self.config.search, len(curves["val_loss"])
        first, last = curves["val_loss"][0], curves["val_loss"][-1]
        if train["first_nonfinite_step"] >= 0 or not math.isfinite(last):
            return "diverged"
        if last > _BLOWN_UP * first:
            return (
                f"failed to learn: validation loss {last:.3g}, over {_BLOWN_UP}x its first "
                f"epoch's {first:.3g}"
            )
        if early_stop_epoch(self.config, curves["val_accuracy"], curves["val_loss"]) == epochs:
            return "early stopping"
        if epochs >= s.max_epochs:
            return f"finished {epochs} epochs"
        if self._two:
            if s.pruner == "dominated" and self._dominated(trial.number, epochs):
                return f"pruned after {epochs} epochs: dominated"
        elif trial.should_prune():
            return f"pruned after {epochs} epochs"
        return None

    def _dominated(self, number: int, epochs: int) -> bool:
        """At a rung (epochs `max_epochs / factor^k`), whether another trial that reached it,
        any worker's, was at least as good there on both objectives and better on one."""
        s = self.config.search
        rungs = {max(1, round(s.max_epochs / s.factor**k)) for k in range(1, 10)}
        if epochs not in rungs - {s.max_epochs}:
            return False
        at_rung = {
            t.number: (t.user_attrs["curves"][s.objective][epochs - 1], t.user_attrs["params"])
            for t in self.study.trials().values()
            if len(t.user_attrs.get("curves", {}).get(s.objective, [])) >= epochs
            and "params" in t.user_attrs
        }
        mine = at_rung.pop(number)
        return any(
            objectives.dominates(other, mine, maximizes(self.config)) for other in at_rung.values()
        )

    def _tell(self, slot: int, reason: str, curves: dict[str, Any]) -> None:
        """Ends the slot's trial in the study with its verdict, and frees the slot."""
        from optuna.trial import TrialState

        trial = self._trials[self.slots[slot]]
        did_learn = learned(reason, curves)
        trial.set_user_attr("learned", did_learn)
        if reason == "diverged":
            self.study.tell(trial, state=TrialState.FAIL)
        elif reason.startswith(("pruned", "failed")):
            self.study.tell(trial, state=TrialState.PRUNED)
        elif self._two:
            params = self.study.trials()[trial.number].user_attrs["params"]
            self.study.tell(trial, [best_value(self.config, curves), params])
        else:
            self.study.tell(trial, best_value(self.config, curves))
        self._free(slot)

    def _free(self, slot: int) -> None:
        trial = self._trials.pop(self.slots[slot])
        self.study.release(trial)
        self.population.free(slot)
        self.slots[slot] = None

    def log(self) -> None:
        done = trials(self.config, self.study)
        best = best_trial(done, self.config)
        logging.info(
            "Search epoch %d (%.1f s): %d trial(s) training here, %d finished in the study%s.",
            self.step,
            self.clock,
            sum(n is not None for n in self.slots),
            len(done),
            f"; best so far trial {best['index']}, {self.config.search.objective} "
            f"{best['objective']:.4f}"
            if best
            else "",
        )


# A validation loss this many times its first epoch's: the trial left the region it learned in.
_BLOWN_UP = 10


def trials(config: ConfigDict, study: study_lib.Study) -> list[dict[str, Any]]:
    """The study's finished trials as search.json lists them, by number. A trial that was
    retried after its worker died is left out: its retry stands for it."""
    from optuna.pruners import HyperbandPruner

    pruner = study.study.pruner
    out = []
    for t in sorted(study.study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.is_finished() and "stopped" in t.user_attrs:
            a, curves = t.user_attrs, t.user_attrs["curves"]
            out.append(
                {
                    "index": t.number,
                    "hparams": study_lib.decode(study.space, t.params),
                    "bracket": pruner._get_bracket_id(study.study, t)
                    if isinstance(pruner, HyperbandPruner)
                    else 0,
                    "epochs": len(curves["val_loss"]),
                    **{k: curves[k] for k in CURVES},
                    "stopped": a["stopped"],
                    "learned": a["learned"],
                    "objective": None if a["stopped"] == "diverged" else best_value(config, curves),
                    "seconds": curves["seconds"],
                    **({"params": a["params"]} if "params" in a else {}),
                    "workdir": a["workdir"],
                    "finished": t.datetime_complete.isoformat(),
                }
            )
    return out


def learned(reason: str, curves: dict[str, Any]) -> bool:
    """Whether a stopped trial learned: finite, its validation loss not blown up, and above chance
    accuracy at some epoch. A trial that did not is never best while another one learned."""
    return (
        reason != "diverged"
        and not reason.startswith("failed")
        and max(curves["val_accuracy"]) > metrics.CHANCE_ACCURACY
    )


def maximizes(config: ConfigDict) -> bool:
    """Whether the search's objective is better higher (accuracy) or lower (loss)."""
    return config.search.objective == "val_accuracy"


def best_value(config: ConfigDict, curves: dict[str, Any]) -> float:
    """A trial's objective: the best value of its curve."""
    curve = curves[config.search.objective]
    return max(curve) if maximizes(config) else min(curve)


def candidates(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials that may be chosen: never a diverged one, nor one that did not learn while
    another did."""
    finished = [t for t in trials if t["objective"] is not None]
    return [t for t in finished if t["learned"]] or finished


def best_trial(trials: list[dict[str, Any]], config: ConfigDict) -> dict[str, Any] | None:
    """The trial with the best objective (of two objectives, the Pareto front's best on the
    first, the fewer parameters between equals); None if every one diverged."""
    sign = -1 if maximizes(config) else 1
    return min(
        candidates(trials),
        key=lambda t: (sign * t["objective"], t.get("params", 0)),
        default=None,
    )


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
