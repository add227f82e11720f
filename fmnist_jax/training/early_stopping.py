"""Early stopping on a validation metric, as a small explicit state machine (Keras semantics).

Not `flax.training.early_stopping.EarlyStopping`: that one only minimizes, and keeps neither the
epoch of the best value nor the monitored key, which a run needs to restore its best epoch's
weights (`restore_best`), to report `restored_epoch`, and to resume from the JSON in a checkpoint's
meta. One instance per run of the run axis; each stops on its own.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    """Tracks the best value of `monitor`; stops after `patience` epochs without an improvement.

    An improvement must beat the best by more than `min_delta` (higher accuracy, lower loss).
    """

    monitor: str
    patience: int
    min_delta: float = 0.0
    best: float = math.nan
    best_epoch: int = 0
    epochs_without_improvement: int = 0

    @property
    def higher_is_better(self) -> bool:
        return not self.monitor.endswith("loss")

    def update(self, epoch: int, value: float) -> bool:
        """Records `value` for `epoch`; returns whether it is the new best."""
        delta = value - self.best if self.higher_is_better else self.best - value
        if math.isnan(self.best) or delta > self.min_delta:
            self.best, self.best_epoch, self.epochs_without_improvement = value, epoch, 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.epochs_without_improvement >= self.patience
