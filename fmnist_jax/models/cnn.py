"""Convolutional network: conv blocks ((conv, optional batch norm, activation) x n, pool, dropout), then dense."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax.models.layers import (
    MONOTONE,
    BatchNorm,
    Conv,
    DenseStack,
    activation,
    dropout,
    expose,
    layer_key,
    leading,
    narrowed,
    pool,
    pooled_size,
    silence,
)
from fmnist_jax.shapes import IMAGE_SHAPE


class CNN(nnx.Module):
    """One conv block per entry of `conv_channels`, then the dense head; returns logits.

    Layers are named `conv{block}` and `bn{block}` (`conv{block}_{i}` with several convolutions
    per block), the names of the Flax Linen version, so its checkpoints restore as they are.

    A search trains trials of several channel counts inside the widest CNN (`narrow`, and
    `use` while it trains), as `DenseStack` does with widths.
    """

    # The settings a run may give its own value inside this model's program (see `Model`): the
    # channels per block and the head's widths, masked inside these.
    PER_RUN = ("conv_channels", "hidden_sizes")

    def __init__(
        self,
        conv_channels: tuple[int, ...] = (32, 64),
        # Convolutions per block before its pooling (2 = VGG-style blocks).
        convs_per_block: int = 1,
        kernel_size: int = 3,
        pooling: str = "max",
        pool_size: int = 2,
        batch_norm: bool = False,
        conv_dropout_rate: float = 0.0,
        hidden_sizes: tuple[int, ...] = (128,),
        activation: str = "relu",
        dropout_rate: float = 0.0,
        num_classes: int = 10,
        # Pooling ops: "auto" = XLA:CPU-friendly on the CPU backend, native elsewhere (layers.pool).
        formulation: str = "auto",
        *,
        image_shape: tuple[int, ...] = IMAGE_SHAPE,
        rngs: nnx.Rngs,
    ):
        self.activation, self.pooling, self.pool_size = activation, pooling, pool_size
        self.formulation, self.batch_norm = formulation, batch_norm
        height, width, channels_in = image_shape
        blocks = []
        for i, channels in enumerate(conv_channels):
            names = tuple(
                f"{i}" if convs_per_block == 1 else f"{i}_{j}" for j in range(convs_per_block)
            )
            for suffix in names:
                conv = Conv(channels_in, channels, kernel_size, use_bias=not batch_norm, rngs=rngs)
                setattr(self, f"conv{suffix}", conv)
                if batch_norm:  # Keras' BatchNormalization defaults
                    bn = BatchNorm(channels, momentum=0.99, epsilon=1e-3, rngs=rngs)
                    setattr(self, f"bn{suffix}", bn)
                channels_in = channels
            blocks.append(names)
            height, width = (pooled_size(s, pooling, pool_size) for s in (height, width))
        self.blocks = tuple(blocks)
        self.conv_dropout = dropout(conv_dropout_rate, "conv_dropout_rate")
        self.head = DenseStack(
            height * width * channels_in,
            tuple(hidden_sizes),
            activation,
            dropout_rate,
            num_classes,
            rngs=rngs,
        )
        # The channels in use per block, `[num_blocks]` (a run's, traced; see `use`); None: all.
        self.channels = None

    def use(self, widths: dict[str, jax.Array]) -> None:
        """Trains and evaluates as the CNN of a run's own `widths` (`PER_RUN`) inside this one."""
        if "conv_channels" in widths:
            self.channels = nnx.data(widths["conv_channels"])  # a traced value, not structure
        if "hidden_sizes" in widths:
            self.head.widths = nnx.data(widths["hidden_sizes"])

    def narrow(self, widths: dict[str, jax.Array]) -> None:
        """Makes these weights the initial weights of a CNN of `widths` (`PER_RUN`; a missing one:
        these) inside this one (`layers.narrowed`)."""
        channels, hidden_sizes = widths.get("conv_channels"), widths.get("hidden_sizes")
        used = None  # the image's channels: all
        for i, names in enumerate(self.blocks):
            for suffix in names:
                conv = getattr(self, f"conv{suffix}")
                columns = leading(conv.kernel.value.shape[-1], self._channels(channels, i))
                conv.kernel.value = narrowed(conv.kernel.value, used, columns)
                if conv.bias is not None:
                    conv.bias.value = jnp.where(columns, conv.bias.value, 0.0)
                used = columns
        # The head reads the flattened maps, each position's channels in turn.
        in_features = self.head.Dense_0.kernel.value.shape[0]
        self.head.narrow(hidden_sizes, jnp.tile(used, in_features // used.size))

    @staticmethod
    def _channels(channels: jax.Array | None, block: int) -> jax.Array | None:
        return None if channels is None else channels[block]

    def _conv(self, x: jax.Array, suffix: str, train: bool) -> tuple[jax.Array, jax.Array | None]:
        x, bias = getattr(self, f"conv{suffix}")(x)
        if self.batch_norm:
            x = getattr(self, f"bn{suffix}")(x, use_running_average=not train)
        return x, bias

    def __call__(
        self, images: jax.Array, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        act = activation(self.activation)
        x = images
        for i, names in enumerate(self.blocks):
            width = self._channels(self.channels, i)
            for suffix in names[:-1]:
                x, bias = self._conv(x, suffix, train)
                x = silence(act(x if bias is None else x + bias), width)
            x, bias = self._conv(x, names[-1], train)
            if self.pooling == "max" and self.activation in MONOTONE:
                # Same numbers as act(conv + b) then pool, with the bias and activation on pooled maps.
                x = pool(x, self.pooling, self.pool_size, self.formulation)
                x = silence(act(x if bias is None else x + bias), width)
            else:
                x = silence(act(x if bias is None else x + bias), width)
                x = pool(x, self.pooling, self.pool_size, self.formulation)
            x = expose(self, f"block{i}", x)
            if self.conv_dropout is not None:
                x = self.conv_dropout(x, deterministic=not train, rngs=layer_key(dropout_key, i))
        x = x.reshape((x.shape[0], -1))
        return self.head(x, train, layer_key(dropout_key, len(self.blocks)))
