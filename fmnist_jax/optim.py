"""Optax optimizer and learning-rate schedule from `config.optimizer` and `config.schedule`."""

from __future__ import annotations

import optax
from ml_collections import ConfigDict


def schedule(
    schedule_config: ConfigDict, learning_rate: float, steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
    """Learning rate as a function of the step; the config states durations in epochs."""
    name = schedule_config.name
    total_steps = steps_per_epoch * num_epochs
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "cosine":
        warmup = int(schedule_config.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else learning_rate,
            peak_value=learning_rate,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=learning_rate * schedule_config.end_factor,
        )
    if name == "exponential":
        return optax.exponential_decay(
            learning_rate, transition_steps=steps_per_epoch, decay_rate=schedule_config.decay_rate
        )
    if name == "piecewise":
        boundaries = {
            int(e * steps_per_epoch): s
            for e, s in zip(schedule_config.boundaries_epochs, schedule_config.scales, strict=False)
        }
        return optax.piecewise_constant_schedule(learning_rate, boundaries)
    raise ValueError(f"unknown schedule {name!r}")  # config.validate rejects it first.


def optimizer(optimizer_config: ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """The named optimizer with optional gradient clipping (first) and weight decay."""
    c = optimizer_config
    base = {
        "sgd": lambda: optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov),
        "adam": lambda: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps),
        "adamw": lambda: optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay),
        "adadelta": lambda: optax.adadelta(lr, rho=c.rho, eps=c.eps),
        "rmsprop": lambda: optax.rmsprop(lr, decay=c.rho, eps=c.eps, momentum=c.momentum or None),
    }[c.name]()
    parts = []
    if c.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
    if c.weight_decay > 0 and c.name != "adamw":
        # Added to the gradient before the optimizer: for sgd this is exactly an L2 penalty.
        parts.append(optax.add_decayed_weights(c.weight_decay))
    return optax.chain(*parts, base)
