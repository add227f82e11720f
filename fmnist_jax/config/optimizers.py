"""The optimizers a config can name (`optimizer.name`), one entry each in `OPTIMIZERS`: how Optax
builds it and which `optimizer.*` settings it reads. Adding one is adding its entry (and the
defaults of any setting it reads that no other does, in `default()`); the config checks read the
entries, so a setting the chosen optimizer would not read is refused.

Every optimizer also takes the learning rate (on the schedule), gradient clipping
(`grad_clip_norm`) and weight decay (`weight_decay`). An optimizer that decays the weights itself
(decoupled, inside its update: AdamW, Lion) is given the decay; for the others it is added to the
gradient before the update, which for SGD is exactly an L2 penalty.

Builders take Optax as an argument, so that this table (read by every config check) imports no JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ml_collections import ConfigDict

# `setting(name)`: the run's value of `optimizer.<name>` (a traced number inside a sweep);
# `static`: `config.optimizer`, whose values fix the optimizer's structure (momentum or none).
Builder = Callable[[Any, Any, Callable[[str], Any], ConfigDict], Any]


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """`build(optax, learning_rate, setting, static)`; `reads`: the settings it reads besides the
    learning rate, clipping and weight decay; `decays_weights`: it applies `weight_decay` itself."""

    build: Builder
    reads: tuple[str, ...] = ()
    decays_weights: bool = False


def _momentum(setting: Callable[[str], Any], static: ConfigDict) -> Any:
    return setting("momentum") if static.momentum else None  # a swept 0 traces a zero decay


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(
        lambda optax, lr, setting, static: optax.sgd(
            lr, momentum=_momentum(setting, static), nesterov=static.nesterov
        ),
        reads=("momentum", "nesterov"),
    ),
    "adam": Optimizer(
        lambda optax, lr, setting, static: optax.adam(
            lr, b1=setting("b1"), b2=setting("b2"), eps=setting("eps")
        ),
        reads=("b1", "b2", "eps"),
    ),
    "adamw": Optimizer(
        lambda optax, lr, setting, static: optax.adamw(
            lr,
            b1=setting("b1"),
            b2=setting("b2"),
            eps=setting("eps"),
            weight_decay=setting("weight_decay"),
        ),
        reads=("b1", "b2", "eps"),
        decays_weights=True,
    ),
    "adadelta": Optimizer(
        lambda optax, lr, setting, static: optax.adadelta(
            lr, rho=setting("rho"), eps=setting("eps")
        ),
        reads=("rho", "eps"),
    ),
    "rmsprop": Optimizer(
        lambda optax, lr, setting, static: optax.rmsprop(
            lr, decay=setting("rho"), eps=setting("eps"), momentum=_momentum(setting, static)
        ),
        reads=("rho", "eps", "momentum"),
    ),
}


def read_only_by() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each `optimizer.*` setting that only some optimizers read: ("optimizer.name", those)."""
    keys = sorted({key for o in OPTIMIZERS.values() for key in o.reads})
    return {
        f"optimizer.{key}": (
            "optimizer.name",
            tuple(name for name, o in OPTIMIZERS.items() if key in o.reads),
        )
        for key in keys
    }
