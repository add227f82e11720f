"""A search's objectives: one validation metric, or two to trade off (the metric and the trial's
parameter count), with the Pareto front and the dominance that the "dominated" pruner applies."""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from fmnist_jax import config as config_lib
from fmnist_jax.errors import UserError

# Optuna's pruners refuse studies of two objectives; "dominated" is this project's rule for them
# (`search_record.Record._dominated`), and Optuna's study then prunes nothing itself.
TWO_OBJECTIVE_PRUNERS = ("none", "dominated")


def of(config: ConfigDict) -> tuple[str, ...]:
    """The search's objectives: `search.objectives`, or `search.objective` alone."""
    return tuple(config.search.objectives) or (config.search.objective,)


def directions(config: ConfigDict) -> list[str]:
    return ["maximize" if o == "val_accuracy" else "minimize" for o in of(config)]


def check(config: ConfigDict) -> None:
    """Refuses, in one paragraph, objectives or a pruner that cannot work together."""
    s = config.search
    if not s.objectives:
        if s.pruner == "dominated":
            raise UserError(
                "search.pruner='dominated' stops trials dominated on two objectives: set "
                "search.objectives, e.g. ('val_accuracy', 'params'), or choose another pruner."
            )
        return
    if (
        len(s.objectives) != 2
        or s.objectives[0] not in config_lib.MONITORS
        or s.objectives[1] != "params"
    ):
        raise UserError(
            f"search.objectives={tuple(s.objectives)!r}: name two, a validation metric "
            f"({' or '.join(config_lib.MONITORS)}) and then 'params' (the trial's parameter "
            "count), e.g. ('val_accuracy', 'params'); or leave it empty for search.objective."
        )
    if s.objectives[0] != s.objective:
        raise UserError(
            f"search.objectives names {s.objectives[0]} but search.objective is {s.objective}: "
            "set both to the same validation metric."
        )
    if s.pruner not in TWO_OBJECTIVE_PRUNERS:
        raise UserError(
            f"search.pruner={s.pruner!r} cannot judge two objectives (Optuna's pruners refuse "
            "them): choose 'dominated' (stop a trial that another dominates at a rung) or 'none'."
        )


def pareto_front(trials: list[dict[str, Any]], maximize: bool) -> list[int]:
    """The `trials` no other of them dominates on (objective, parameter count), by index."""
    points = {t["index"]: (t["objective"], t["params"]) for t in trials}
    return [
        i
        for i, p in points.items()
        if not any(dominates(q, p, maximize) for j, q in points.items() if j != i)
    ]


def dominates(a: tuple[float, int], b: tuple[float, int], maximize: bool) -> bool:
    """Whether (objective, parameters) `a` is at least as good as `b` on both and better on one."""
    better = a[0] >= b[0] if maximize else a[0] <= b[0]
    return better and a[1] <= b[1] and a != b
