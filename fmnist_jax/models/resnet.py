"""Residual network for 28x28 images: a 3x3 stem, stages of basic blocks with batch norm, global
average pooling, a linear classifier. Wide-ResNet-style widths and depths come from the config."""

from __future__ import annotations

import jax
from flax import nnx

from fmnist_jax.models.layers import BatchNorm, activation, dropout, expose
from fmnist_jax.shapes import IMAGE_SHAPE

# He initialization for convolutions followed by ReLU (the ResNet papers' choice).
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(in_features: int, features: int, size: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free convolution (batch norm follows every one)."""
    return nnx.Conv(
        in_features,
        features,
        (size, size),
        stride,
        use_bias=False,
        kernel_init=conv_init,
        rngs=rngs,
    )


def _batch_norm(features: int, rngs: nnx.Rngs, **kwargs) -> BatchNorm:
    """Batch norm with the ResNet papers' momentum and epsilon."""
    return BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs, **kwargs)


class BasicBlock(nnx.Module):
    """conv3x3-BN-act-conv3x3-BN plus the shortcut (a strided 1x1 conv + BN when the shape changes), then act."""

    def __init__(
        self, in_channels: int, channels: int, stride: int, activation: str, *, rngs: nnx.Rngs
    ):
        self.activation = activation
        self.conv0 = _conv(in_channels, channels, 3, stride, rngs)
        self.bn0 = _batch_norm(channels, rngs)
        self.conv1 = _conv(channels, channels, 3, 1, rngs)
        # Zero-initialized last scale: each block starts as the identity (Goyal et al. 2017).
        self.bn1 = _batch_norm(channels, rngs, scale_init=nnx.initializers.zeros)
        projected = stride != 1 or in_channels != channels
        self.shortcut = _conv(in_channels, channels, 1, stride, rngs) if projected else None
        self.shortcut_bn = _batch_norm(channels, rngs) if projected else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = activation(self.activation)
        y = act(self.bn0(self.conv0(x), use_running_average=not train))
        y = self.bn1(self.conv1(y), use_running_average=not train)
        if self.shortcut is not None:
            x = self.shortcut_bn(self.shortcut(x), use_running_average=not train)
        return act(x + y)


class ResNet(nnx.Module):
    """Stage i has `blocks_per_stage` blocks of `stage_channels[i]` channels; every stage after the
    first halves the resolution (28 -> 14 -> 7); returns logits.

    Blocks are named `stage{i}_block{j}`, the names of the Flax Linen version, so its checkpoints
    restore as they are.
    """

    def __init__(
        self,
        stage_channels: tuple[int, ...] = (64, 128, 256),
        blocks_per_stage: int = 2,
        stem_channels: int = 32,
        activation: str = "relu",
        dropout_rate: float = 0.0,
        num_classes: int = 10,
        *,
        image_shape: tuple[int, ...] = IMAGE_SHAPE,
        rngs: nnx.Rngs,
    ):
        self.activation = activation
        self.stem = _conv(image_shape[-1], stem_channels, 3, 1, rngs)
        self.stem_bn = _batch_norm(stem_channels, rngs)
        channels_in, names = stem_channels, []
        for i, channels in enumerate(stage_channels):
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                block = BasicBlock(channels_in, channels, stride, activation, rngs=rngs)
                setattr(self, f"stage{i}_block{j}", block)
                names.append(f"stage{i}_block{j}")
                channels_in = channels
        self.blocks = tuple(names)
        self.dropout = dropout(dropout_rate)
        self.classifier = nnx.Linear(channels_in, num_classes, rngs=rngs)

    def __call__(
        self, images: jax.Array, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        act = activation(self.activation)
        x = act(self.stem_bn(self.stem(images), use_running_average=not train))
        for name in self.blocks:
            x = expose(self, f"{name}_out", getattr(self, name)(x, train))
        x = expose(self, "features", x.mean(axis=(1, 2)))
        if self.dropout is not None:
            x = self.dropout(x, deterministic=not train, rngs=dropout_key)
        return self.classifier(x)
