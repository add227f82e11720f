"""The run axis: every run a compiled program trains at once, as members of a sweep x seeds.

A config's `grid` holds entries of two forms: `(key, (value, ...))`, one value of the key per
member, and `((key, key, ...), ((value, value, ...), ...))`, keys that vary together, one row of
values per member (a list of trials, as a search gives). The members are every combination of the
entries' choices; each member trains with `num_seeds` seeds. Run `m * num_seeds + s` is member m
with seed `seed + s`. These pure functions of the config are the one place that numbering is
defined.
"""

from __future__ import annotations

import itertools
from typing import Any

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


def swept_values(config: ConfigDict) -> dict[str, list[Any]]:
    """Each swept key's distinct values over the members, in the order they first appear."""
    values: dict[str, list[Any]] = {key: [] for keys, _ in entries(config.grid) for key in keys}
    for member in members(config):
        for key, value in member.items():
            if value not in values[key]:
                values[key].append(value)
    return values


def run_seeds(config: ConfigDict) -> list[int]:
    """The seed of each run on the run axis: every member with seeds seed, seed+1, ...; member m's
    seed s is run m * num_seeds + s."""
    return [config.seed + s for _ in members(config) for s in range(config.num_seeds)]


def num_runs(config: ConfigDict) -> int:
    """The length of the run axis: members x seeds."""
    return len(members(config)) * config.num_seeds


def run_values(config: ConfigDict, run: int) -> dict[str, Any]:
    """The swept keys' values of run `run` ({} without a grid)."""
    return members(config)[run // config.num_seeds]


def widest(config: ConfigDict) -> ConfigDict:
    """The config a sweep's program is built from: each swept key at its largest value, so that the
    parts a 0 turns off (dropout, momentum, clipping, weight decay, EMA, erasing) exist for every
    member; each run's own values replace those numbers inside the program."""
    return with_values(config, {key: largest(v) for key, v in swept_values(config).items()})


def largest(values: list[Any]) -> Any:
    """The largest value; of tuples of widths, the largest of each."""
    if isinstance(values[0], (tuple, list)):
        return tuple(max(column) for column in zip(*values, strict=True))
    return max(values)
