"""A search's space and how it is sampled: pure functions of the config and a seed.

`config.search.space` holds `(key, spec)` pairs over config keys, each spec one of

- `("int", low, high, step)`: low, low + step, ... up to high (Keras Tuner's `hp.Int`);
- `("choice", (value, ...))`: one of the values (`hp.Choice`);
- `("uniform", low, high)` and `("log_uniform", low, high)`: a float in [low, high], uniformly or
  uniformly in its logarithm (`hp.Float`, with `sampling="log"`).

`Sampler` proposes trials: `grid` every combination, `random` and `halton` (scrambled, scipy's)
points of the unit cube mapped onto the space, `tpe` Optuna's TPE through its ask-and-tell interface
(Optuna decides, the project trains).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any

import numpy as np

from fmnist_jax.errors import UserError

KINDS = ("int", "choice", "uniform", "log_uniform")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched key and its range."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def from_unit(self, u: float) -> Any:
        """The value at `u` in [0, 1): the unit interval stretched over the range."""
        if self.kind == "uniform":
            low, high = self.args
            return float(low + u * (high - low))
        if self.kind == "log_uniform":
            low, high = self.args
            return float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
        position = min(int(u * self.size()), self.size() - 1)
        if self.kind == "int":
            low, _, step = self.args
            return low + position * step
        return self.args[0][position]

    def size(self) -> int:
        """How many values a discrete range holds, counted without listing them."""
        if self.kind == "int":
            low, high, step = self.args
            return (high - low) // step + 1
        return len(self.values())

    def values_or_ends(self) -> list[Any]:
        """Every value of a choice, the ends of a range: what bounds a trial's value (to check a
        space, and to size the program that holds every trial). A range's ends only, so that a
        range of a million integers is checked as quickly as one of ten."""
        if self.kind == "int":
            low, _, step = self.args
            return [low, low + (self.size() - 1) * step]
        return self.values() if self.kind == "choice" else list(self.args)

    def values(self) -> list[Any]:
        """Every value of a discrete range (what a grid takes)."""
        if self.kind == "int":
            low, high, step = self.args
            return list(range(low, high + 1, step))
        if self.kind == "choice":
            return list(self.args[0])
        raise UserError(
            f"search.space's {self.key} is a continuous range ({self.kind}), which a grid cannot "
            "list: give it as ('choice', (value, ...)) or ('int', low, high, step), or choose "
            "search.algorithm='random', 'halton' or 'tpe'."
        )


def dimensions(space: Any) -> list[Dimension]:
    """`config.search.space` as dimensions; a spec that cannot work is one clear `UserError`."""
    example = "e.g. (('model.hidden_sizes', ('int', 32, 512, 32)), ('optimizer.learning_rate', ('choice', (1e-2, 1e-3, 1e-4))))"
    if not isinstance(space, (tuple, list)) or not space:
        raise UserError(f"search.space must name at least one (key, spec) pair, {example}.")
    parsed = []
    for entry in space:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise UserError(f"search.space entry {entry!r} is not a (key, spec) pair; {example}.")
        key, spec = entry
        parsed.append(_dimension(str(key), spec))
    keys = [d.key for d in parsed]
    if len(set(keys)) != len(keys):
        raise UserError(f"search.space names a key twice: {keys}.")
    return parsed


def _dimension(key: str, spec: Any) -> Dimension:
    kind = spec[0] if isinstance(spec, (tuple, list)) and spec else None
    args = tuple(spec[1:]) if kind else ()
    numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
    ok = {
        "int": len(args) == 3
        and numbers
        and all(isinstance(a, int) for a in args)
        and args[2] >= 1
        and args[0] <= args[1],
        "choice": len(args) == 1 and isinstance(args[0], (tuple, list)) and len(args[0]) > 0,
        "uniform": len(args) == 2 and numbers and args[0] < args[1],
        "log_uniform": len(args) == 2 and numbers and 0 < args[0] < args[1],
    }
    if kind not in KINDS or not ok[kind]:
        raise UserError(
            f"search.space's {key}: {spec!r} is not a range. Write ('int', low, high, step) with "
            "integers, ('choice', (value, ...)), ('uniform', low, high) or ('log_uniform', low, "
            "high) with 0 < low < high."
        )
    return Dimension(key, kind, args)


class Sampler:
    """Proposes trials ({key: value}) and learns from their results where its algorithm does."""

    def __init__(self, algorithm: str, space: list[Dimension], seed: int, maximize: bool):
        self.algorithm, self.space = algorithm, space
        self._rng = np.random.default_rng(seed)
        self._pending: list[tuple[dict[str, Any], Any]] = []  # TPE's asked, untold trials
        if algorithm == "grid":
            self._grid = itertools.product(*(d.values() for d in space))
        elif algorithm == "halton":
            from scipy.stats import qmc

            self._halton = qmc.Halton(d=len(space), scramble=True, seed=seed)
        elif algorithm == "tpe":
            self._study = _optuna_study(seed, maximize)

    def ask(self, count: int) -> list[dict[str, Any]]:
        """Up to `count` new trials (fewer only when a grid is exhausted)."""
        if self.algorithm == "grid":
            rows = list(itertools.islice(self._grid, count))
            return [dict(zip((d.key for d in self.space), row, strict=True)) for row in rows]
        if self.algorithm == "tpe":
            return [self._ask_optuna() for _ in range(count)]
        if self.algorithm == "halton":
            points = self._halton.random(count)
        else:  # random, and Hyperband's draws
            points = self._rng.random((count, len(self.space)))
        return [{d.key: d.from_unit(u) for d, u in zip(self.space, p, strict=True)} for p in points]

    def _ask_optuna(self) -> dict[str, Any]:
        trial = self._study.ask({d.key: _optuna_distribution(d) for d in self.space})
        params = {
            d.key: d.values()[trial.params[d.key]] if d.kind == "choice" else trial.params[d.key]
            for d in self.space
        }
        self._pending.append((params, trial))
        return params

    def tell(
        self,
        params: dict[str, Any],
        objective: float | None,
        curve: list[float] | None = None,
        pruned: bool = False,
    ) -> None:
        """The result of a trial `ask` proposed (None: it diverged); only TPE learns from it. A
        pruned trial is told as pruned with its objective's `curve`, as Optuna's pruners report
        it, so that TPE weighs it by how far it got."""
        told = json.dumps(
            params, sort_keys=True
        )  # as a resumed search read it back: widths as lists
        index = next(
            (i for i, (p, _) in enumerate(self._pending) if json.dumps(p, sort_keys=True) == told),
            None,
        )
        if index is None:
            return
        _, trial = self._pending.pop(index)
        import optuna

        if objective is None:
            self._study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif pruned:
            for epoch, value in enumerate(curve or [objective], start=1):
                trial.report(value, epoch)
            self._study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self._study.tell(trial, objective)


def require(algorithm: str) -> None:
    """Refuses, in one paragraph, a sampler whose optional library is not installed."""
    if algorithm != "tpe":
        return
    try:
        import optuna  # noqa: F401
    except ImportError as e:
        raise UserError(
            "search.algorithm='tpe' uses Optuna's TPE sampler, and Optuna is not installed: "
            "pip install 'optuna>=4' (or the package's `search` extra), or choose "
            "search.algorithm='random', 'halton' or 'grid'."
        ) from e


def _optuna_study(seed: int, maximize: bool) -> Any:
    require("tpe")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )


def _optuna_distribution(d: Dimension) -> Any:
    from optuna import distributions

    if d.kind == "int":
        low, high, step = d.args
        return distributions.IntDistribution(low, high - (high - low) % step, step=step)
    if d.kind == "choice":  # by position: Optuna's choices are numbers and strings, not widths
        return distributions.CategoricalDistribution(tuple(range(len(d.args[0]))))
    return distributions.FloatDistribution(*d.args, log=d.kind == "log_uniform")
