"""Optax optimizer and learning-rate schedule from `config.optimizer` and `config.schedule`.

`values` holds a run's own numbers for swept keys (`config.grid`; traced per-run scalars inside a
sweep's program) and replaces the config's; which parts exist (momentum, clipping, weight decay)
follows the config, where each swept key holds its largest value (`RunAxis.widest`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from fmnist_jax.config.optimizers import OPTIMIZERS


def _value(config: ConfigDict, values: Mapping[str, Any], key: str) -> Any:
    return values.get(key, config[key])  # ConfigDict reads dotted keys


def schedule(
    config: ConfigDict, steps_per_epoch: int, values: Mapping[str, Any] | None = None
) -> optax.Schedule:
    """Learning rate as a function of the step; the config states durations in epochs."""
    values = values or {}
    s = config.schedule
    learning_rate = _value(config, values, "optimizer.learning_rate")
    if s.name == "constant":
        return optax.constant_schedule(learning_rate)
    if s.name == "cosine":
        # optax.warmup_cosine_decay_schedule, with the end stated as a fraction of the peak.
        warmup = int(s.warmup_epochs * steps_per_epoch)
        decay = optax.cosine_decay_schedule(
            learning_rate,
            decay_steps=max(steps_per_epoch * config.num_epochs, warmup + 1) - warmup,
            alpha=_value(config, values, "schedule.end_factor"),
        )
        if not warmup:
            return decay
        warm = optax.linear_schedule(0.0, learning_rate, transition_steps=warmup)
        return optax.join_schedules([warm, decay], [warmup])
    if s.name == "exponential":
        # optax.exponential_decay's formula, which checks its rate in Python (not a traced value).
        decay_rate = _value(config, values, "schedule.decay_rate")
        return lambda step: jnp.where(
            step <= 0, learning_rate, learning_rate * jnp.power(decay_rate, step / steps_per_epoch)
        )
    if s.name == "piecewise":
        boundaries = {
            int(e * steps_per_epoch): scale
            for e, scale in zip(s.boundaries_epochs, s.scales, strict=False)
        }
        return optax.piecewise_constant_schedule(learning_rate, boundaries)
    raise ValueError(f"unknown schedule {s.name!r}")  # config.validate rejects it first.


def optimizer(
    config: ConfigDict, steps_per_epoch: int, values: Mapping[str, Any] | None = None
) -> optax.GradientTransformation:
    """The named optimizer (`config.optimizers.OPTIMIZERS`) on the config's schedule, with optional
    gradient clipping (first) and weight decay, its own where it decays the weights itself."""
    values = values or {}
    c = config.optimizer
    chosen = OPTIMIZERS[c.name]

    def setting(name: str) -> Any:
        return _value(config, values, f"optimizer.{name}")

    base = chosen.build(optax, schedule(config, steps_per_epoch, values), setting, c)
    parts = []
    if c.grad_clip_norm > 0:
        clip = setting("grad_clip_norm")
        if "optimizer.grad_clip_norm" in values:  # a run's 0 means no clipping
            clip = jnp.where(clip > 0, clip, jnp.inf)
        parts.append(optax.clip_by_global_norm(clip))
    if c.weight_decay > 0 and not chosen.decays_weights:
        # Added to the gradient before the optimizer: for sgd this is exactly an L2 penalty.
        parts.append(optax.add_decayed_weights(setting("weight_decay")))
    return optax.chain(*parts, base)
