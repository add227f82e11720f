"""The state every run starts from: its seed's keys, its initial weights and optimizer state, and
the same for chosen runs of a running program (a search's refilled slots).

Pure functions of the model, the optimizer and the keys, each over the run axis like the step
math in `engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax.engine import TrainState, model_settings
from fmnist_jax.engine.backend import jit_unoptimized
from fmnist_jax.models import Model


def seed_keys(seeds: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, shuffle, dropout) keys of runs with these seeds, each `[len(seeds)]`.

    Run k gets exactly the keys of a run of its own with seed `seeds[k]`. One program compiled
    without optimization: run eagerly, the split would compile six small programs.
    """
    return jit_unoptimized(_split_seeds, runs_once=True)(np.asarray(seeds, np.int32))


def _split_seeds(seeds: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(seeds)
    return keys[:, 0], keys[:, 1], keys[:, 2]


def _init_fn(
    model: Model, tx: optax.GradientTransformation, ema: bool
) -> Callable[[jax.Array, Mapping[str, jax.Array]], TrainState]:
    def init(key, values):
        return init_state(model, tx, key, ema=ema, settings=model_settings(values))

    return jax.vmap(init)


def init_states(
    model: Model,
    tx: optax.GradientTransformation,
    init_keys: jax.Array,
    ema: bool = False,
    values: Mapping[str, jax.Array] | None = None,
) -> TrainState:
    """`init_state` of each of the `[num_runs]` keys with its run's `values` (a search trial's
    widths), stacked on a leading run axis, as one compiled program."""
    return jit_unoptimized(_init_fn(model, tx, ema), runs_once=True)(init_keys, values or {})


def state_shapes(
    model: Model,
    tx: optax.GradientTransformation,
    init_keys: jax.Array,
    ema: bool = False,
    values: Mapping[str, jax.Array] | None = None,
) -> TrainState:
    """The shapes and dtypes of `init_states`' result, computing nothing (to compile against)."""
    return jax.eval_shape(_init_fn(model, tx, ema), init_keys, values or {})


def reinitialize(
    model: Model,
    tx: optax.GradientTransformation,
    ema: bool,
    state: TrainState,
    fresh: jax.Array,
    init_keys: jax.Array,
    values: Mapping[str, jax.Array],
) -> TrainState:
    """`state` with the runs marked `fresh` (`[num_runs]` booleans) back at their initial state:
    the `init_states` of their keys and values (a search's refilled slots)."""
    new = _init_fn(model, tx, ema)(init_keys, values)
    return jax.tree.map(
        lambda n, old: jnp.where(fresh.reshape(-1, *(1,) * (old.ndim - 1)), n, old), new, state
    )


def init_state(
    model: Model,
    tx: optax.GradientTransformation,
    key: jax.Array,
    ema: bool = False,
    settings: Mapping[str, jax.Array] | None = None,
) -> TrainState:
    """Initial weights (and batch-norm statistics) and optimizer state of one run; `settings`:
    its traced model settings (see `Model.init`)."""
    weights = model.init(key, settings)
    params = weights["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=weights["batch_stats"],
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else {},
    )
