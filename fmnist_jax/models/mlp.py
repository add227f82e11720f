"""Multi-layer perceptron: flatten, hidden dense layers, classifier."""

from __future__ import annotations

import flax.linen as nn
import jax

from fmnist_jax.models.layers import DenseStack


class MLP(nn.Module):
    """Keras' `Flatten -> Dense(h, act) [-> Dropout] ... -> Dense(10)`; returns logits."""

    hidden_sizes: tuple[int, ...] = (128,)
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        x = images.reshape((images.shape[0], -1))
        return DenseStack(
            tuple(self.hidden_sizes),
            self.activation,
            self.dropout_rate,
            self.num_classes,
            name="head",
        )(x, train)
