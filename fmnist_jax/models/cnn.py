"""Convolutional network: conv blocks ((conv, optional batch norm, activation) x n, pool, dropout), then dense."""

from __future__ import annotations

import flax.linen as nn
import jax

from fmnist_jax.models.layers import MONOTONE, Conv, DenseStack, activation, pool


class CNN(nn.Module):
    """One conv block per entry of `conv_channels`, then the dense head; returns logits."""

    conv_channels: tuple[int, ...] = (32, 64)
    # Convolutions per block before its pooling (2 = VGG-style blocks).
    convs_per_block: int = 1
    kernel_size: int = 3
    pooling: str = "max"
    pool_size: int = 2
    batch_norm: bool = False
    conv_dropout_rate: float = 0.0
    hidden_sizes: tuple[int, ...] = (128,)
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10
    # Pooling ops: "auto" = XLA:CPU-friendly on the CPU backend, native elsewhere (layers.pool).
    formulation: str = "auto"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        act = activation(self.activation)
        x = images
        for i, channels in enumerate(self.conv_channels):
            for j in range(self.convs_per_block):
                suffix = f"{i}" if self.convs_per_block == 1 else f"{i}_{j}"
                x, bias = Conv(
                    channels, self.kernel_size, use_bias=not self.batch_norm, name=f"conv{suffix}"
                )(x)
                if self.batch_norm:
                    # Keras' BatchNormalization defaults.
                    x = nn.BatchNorm(
                        use_running_average=not train,
                        momentum=0.99,
                        epsilon=1e-3,
                        name=f"bn{suffix}",
                    )(x)
                if j < self.convs_per_block - 1:
                    x = act(x if bias is None else x + bias)
            if self.pooling == "max" and self.activation in MONOTONE:
                # Same numbers as act(conv + b) then pool, with the bias and activation on pooled maps.
                x = pool(x, self.pooling, self.pool_size, self.formulation)
                x = act(x if bias is None else x + bias)
            else:
                x = pool(
                    act(x if bias is None else x + bias),
                    self.pooling,
                    self.pool_size,
                    self.formulation,
                )
            if self.conv_dropout_rate > 0:
                x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        return DenseStack(
            tuple(self.hidden_sizes),
            self.activation,
            self.dropout_rate,
            self.num_classes,
            name="head",
        )(x, train)
