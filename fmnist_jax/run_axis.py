"""The run axis: every run a compiled program trains at once, as members of a sweep x seeds.

A config with a `grid` has one member per combination of the grid's values; each member trains
with `num_seeds` seeds. Run `m * num_seeds + s` is member m with seed `seed + s`. These pure
functions of the config are the one place that numbering is defined.
"""

from __future__ import annotations

import itertools
from typing import Any

from ml_collections import ConfigDict

from fmnist_jax.config import with_values


def members(config: ConfigDict) -> list[dict[str, Any]]:
    """The sweep's members, each {key: value}: every combination of `config.grid`, the last key
    varying fastest; one member, {}, without a grid."""
    keys = [key for key, _ in config.grid]
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(v for _, v in config.grid))
    ]


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
    return with_values(config, {key: max(values) for key, values in config.grid})
