"""Convolutional network: conv blocks (conv, optional batch norm, activation, pool, dropout), then dense."""

from __future__ import annotations

import flax.linen as nn
import jax

from fmnist_jax.models.layers import DenseStack, activation, kernel_init, pool


class CNN(nn.Module):
    """One conv block per entry of `conv_channels`, then the dense head; returns logits."""

    conv_channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    pooling: str = "max"
    pool_size: int = 2
    batch_norm: bool = False
    conv_dropout_rate: float = 0.0
    hidden_sizes: tuple[int, ...] = (128,)
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        act = activation(self.activation)
        x = images
        for i, channels in enumerate(self.conv_channels):
            k = self.kernel_size
            x = nn.Conv(channels, (k, k), padding="SAME", use_bias=not self.batch_norm, kernel_init=kernel_init, name=f"conv{i}")(x)
            if self.batch_norm:
                # Keras' BatchNormalization defaults.
                x = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=f"bn{i}")(x)
            x = pool(act(x), self.pooling, self.pool_size)
            if self.conv_dropout_rate > 0:
                x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        return DenseStack(tuple(self.hidden_sizes), self.activation, self.dropout_rate, self.num_classes, name="head")(x, train)
