"""Multi-layer perceptron: flatten, hidden dense layers, classifier."""

from __future__ import annotations

import math

import jax
from flax import nnx

from fmnist_jax.models.layers import DenseStack
from fmnist_jax.shapes import IMAGE_SHAPE


class MLP(nnx.Module):
    """Keras' `Flatten -> Dense(h, act) [-> Dropout] ... -> Dense(10)`; returns logits."""

    # The settings a run may give its own value inside this model's program (see `Model`): the
    # hidden widths, masked inside these (`DenseStack`).
    PER_RUN = ("hidden_sizes",)

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (128,),
        activation: str = "relu",
        dropout_rate: float = 0.0,
        num_classes: int = 10,
        *,
        image_shape: tuple[int, ...] = IMAGE_SHAPE,
        rngs: nnx.Rngs,
    ):
        self.head = DenseStack(
            math.prod(image_shape),
            tuple(hidden_sizes),
            activation,
            dropout_rate,
            num_classes,
            rngs=rngs,
        )

    def narrow(self, widths: dict[str, jax.Array]) -> None:
        """Makes these weights the initial weights of an MLP of a run's own hidden widths."""
        self.head.narrow(widths["hidden_sizes"])

    def use(self, widths: dict[str, jax.Array]) -> None:
        """Trains and evaluates as the MLP of a run's own hidden widths inside this one."""
        self.head.widths = nnx.data(widths["hidden_sizes"])  # a traced value, not structure

    def __call__(
        self, images: jax.Array, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        return self.head(images.reshape((images.shape[0], -1)), train, dropout_key)
