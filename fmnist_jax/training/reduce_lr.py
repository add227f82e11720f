"""Keras' ReduceLROnPlateau: a run's learning rate drops by a factor once its validation metric
has stopped improving (`config.reduce_lr`).

A pure function of the validation history: a resumed run, or one trained on to more epochs,
recomputes each run's rate from the metrics its checkpoint keeps, so there is no state to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ml_collections import ConfigDict


def learning_rates(
    history: Sequence[dict[str, Any]], config: ConfigDict, initial: Sequence[float]
) -> list[float]:
    """Each run's learning rate for the epoch after `history`, from its `initial` one.

    Keras' rule per epoch: a cooldown epoch counts down and clears the wait; an improvement of
    `monitor` by more than `min_delta` becomes the best; otherwise, outside a cooldown, the wait
    grows, and at `patience` a rate above `min_lr` is multiplied by `factor` (not below `min_lr`),
    the wait restarts and the cooldown begins.
    """
    r = config.reduce_lr
    sign = -1.0 if r.monitor.endswith("loss") else 1.0  # improving = rising, after the sign
    rates = []
    for run, rate in enumerate(initial):
        best, wait, cooldown = -math.inf, 0, 0
        for row in history:
            value = sign * row[f"{r.monitor}_seeds"][run]
            if cooldown > 0:
                cooldown, wait = cooldown - 1, 0
            if value - best > r.min_delta:
                best, wait = value, 0
            elif cooldown == 0:
                wait += 1
                if wait >= r.patience and rate > r.min_lr:
                    rate, wait, cooldown = max(rate * r.factor, r.min_lr), 0, r.cooldown
        rates.append(rate)
    return rates
