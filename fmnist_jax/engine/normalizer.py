"""The input normalization: uint8 pixels to what the model reads, fitted on the training split.

Training, evaluation, inference and the export apply the same `Normalizer`; checkpoints keep its
statistics (`as_tree`), so a restored model reads images as it was trained to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Maps uint8 pixels to model inputs: [0, 1], then optionally per-pixel standardization."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, train_images: np.ndarray, standardize: bool) -> Normalizer:
        if not standardize:
            return cls()
        scaled = train_images.astype(np.float32) / 255.0
        return cls(mean=scaled.mean(axis=0), std=np.maximum(scaled.std(axis=0), 1e-3))

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> Normalizer:
        return cls(mean=tree["mean"], std=tree["std"]) if tree else cls()

    def as_tree(self) -> dict[str, Any]:
        """For checkpoints: inference needs the training split's statistics, not the data."""
        return {} if self.mean is None else {"mean": self.mean, "std": self.std}

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x
