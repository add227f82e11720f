"""A search's space and how it is sampled: pure functions of the config and a seed.

`config.search.space` holds `(key, spec)` pairs over config keys, each spec one of

- `("int", low, high, step)`: low, low + step, ... up to high (Keras Tuner's `hp.Int`);
- `("choice", (value, ...))`: one of the values (`hp.Choice`);
- `("uniform", low, high)` and `("log_uniform", low, high)`: a float in [low, high], uniformly or
  uniformly in its logarithm (`hp.Float`, with `sampling="log"`).

Optuna's samplers propose the trials (`study`); these are the space's checks, which every one of
them needs before anything is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fmnist_jax.errors import UserError

KINDS = ("int", "choice", "uniform", "log_uniform")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched key and its range."""

    key: str
    kind: str
    args: tuple[Any, ...]

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
