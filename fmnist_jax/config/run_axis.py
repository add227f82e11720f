"""The run axis: every run a compiled program trains at once, as members of a sweep x seeds.

A config's `grid` holds entries of two forms: `(key, (value, ...))`, one value of the key per
member, and `((key, key, ...), ((value, value, ...), ...))`, keys that vary together, one row of
values per member (a list of trials, as a search gives). The members are every combination of the
entries' choices; each member trains with `num_seeds` seeds. Run `m * num_seeds + s` is member m
with seed `seed + s`. These pure functions of the config are the one place that numbering is
defined.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from fmnist_jax.config import with_values


def entries(grid: Any) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
    """Each grid entry as (its keys, its rows of values): a single key's values become rows of one."""
    normalized = []
    for key, values in grid:
        if isinstance(key, (tuple, list)):
            normalized.append((tuple(key), [tuple(row) for row in values]))
        else:
            normalized.append(((key,), [(value,) for value in values]))
    return normalized


def from_json(grid: Any) -> tuple:
    """A grid as config.json holds it (lists) back in the config's form (tuples)."""
    return tuple(
        (tuple(key), tuple(map(tuple, values)))
        if isinstance(key, (tuple, list))
        else (key, tuple(values))
        for key, values in grid
    )


def members(config: ConfigDict) -> list[dict[str, Any]]:
    """The sweep's members, each {key: value}: every combination of the grid's entries, the last
    entry varying fastest; one member, {}, without a grid."""
    grid = entries(config.grid)
    return [
        {
            key: value
            for (keys, _), row in zip(grid, combo, strict=True)
            for key, value in zip(keys, row, strict=True)
        }
        for combo in itertools.product(*(rows for _, rows in grid))
    ]


def run_values(config: ConfigDict, run: int) -> dict[str, Any]:
    """The swept keys' values of run `run` ({} without a grid)."""
    return members(config)[run // config.num_seeds]


@dataclasses.dataclass(frozen=True)
class RunAxis:
    """The run axis of one program, derived once: its members' values and every run's seed. A
    config's (`of`), or a search population's slots, all at the space's largest values."""

    members: tuple[dict[str, Any], ...]
    num_seeds: int
    seeds: tuple[int, ...]
    learning_rate: float  # the config's: each run's own unless swept (see `arrays`)

    @classmethod
    def of(cls, config: ConfigDict) -> RunAxis:
        """The members x seeds of `config`'s grid."""
        return cls.of_members(config, members(config))

    @classmethod
    def of_members(cls, config: ConfigDict, rows: list[dict[str, Any]]) -> RunAxis:
        """`rows` as the members, each with `config.num_seeds` seeds."""
        return cls(
            members=tuple(rows),
            num_seeds=config.num_seeds,
            seeds=tuple(config.seed + s for _ in rows for s in range(config.num_seeds)),
            learning_rate=config.optimizer.learning_rate,
        )

    @property
    def num_runs(self) -> int:
        return len(self.seeds)

    def swept_values(self) -> dict[str, list[Any]]:
        """Each swept key's distinct values over the members, in the order they first appear."""
        values: dict[str, list[Any]] = {key: [] for key in self.members[0]}
        for member in self.members:
            for key, value in member.items():
                if value not in values[key]:
                    values[key].append(value)
        return values

    def widest(self, config: ConfigDict) -> ConfigDict:
        """The config the program is built from: each swept key at its largest value, so that the
        parts a 0 turns off (dropout, momentum, clipping, weight decay, EMA, erasing) exist for
        every member; each run's own values replace those numbers inside the program."""
        return with_values(config, {k: largest(v) for k, v in self.swept_values().items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """The numbers each run passes to the training program, `[num_runs]` float32 each: every
        swept key's values, and the learning rate even without a sweep, so that runs differing
        only in it (the knob users turn most) share one compiled program and find it in the
        compilation cache. It only multiplies the update: the bits of a constant
        (tests/test_sweep.py)."""
        rows = [{"optimizer.learning_rate": self.learning_rate, **m} for m in self.members]
        return {
            key: np.repeat(np.array([r[key] for r in rows], np.float32), self.num_seeds, axis=0)
            for key in rows[0]
        }


def largest(values: list[Any]) -> Any:
    """The largest value; of tuples of widths, the largest of each."""
    if isinstance(values[0], (tuple, list)):
        return tuple(max(column) for column in zip(*values, strict=True))
    return max(values)
