"""Residual network for 28x28 images: a 3x3 stem, stages of basic blocks with batch norm, global
average pooling, a linear classifier. Wide-ResNet-style widths and depths come from the config."""

from __future__ import annotations

import flax.linen as nn
import jax

from fmnist_jax.models.layers import activation

# He initialization for convolutions followed by ReLU (the ResNet papers' choice).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, size: int, stride: int, name: str) -> nn.Conv:
    """A bias-free convolution (batch norm follows every one)."""
    return nn.Conv(features, (size, size), stride, use_bias=False, kernel_init=conv_init, name=name)


def _batch_norm(train: bool, name: str, **kwargs) -> nn.BatchNorm:
    """Batch norm with the ResNet papers' momentum and epsilon."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name, **kwargs
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-act-conv3x3-BN plus the shortcut (a strided 1x1 conv + BN when the shape changes), then act."""

    channels: int
    stride: int
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        act = activation(self.activation)
        y = act(_batch_norm(train, "bn0")(_conv(self.channels, 3, self.stride, "conv0")(x)))
        # Zero-initialized last scale: each block starts as the identity (Goyal et al. 2017).
        y = _batch_norm(train, "bn1", scale_init=nn.initializers.zeros)(
            _conv(self.channels, 3, 1, "conv1")(y)
        )
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = _batch_norm(train, "shortcut_bn")(
                _conv(self.channels, 1, self.stride, "shortcut")(x)
            )
        return act(x + y)


class ResNet(nn.Module):
    """Stage i has `blocks_per_stage` blocks of `stage_channels[i]` channels; every stage after the
    first halves the resolution (28 -> 14 -> 7); returns logits."""

    stage_channels: tuple[int, ...] = (64, 128, 256)
    blocks_per_stage: int = 2
    stem_channels: int = 32
    activation: str = "relu"
    dropout_rate: float = 0.0
    num_classes: int = 10

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        act = activation(self.activation)
        x = act(_batch_norm(train, "stem_bn")(_conv(self.stem_channels, 3, 1, "stem")(images)))
        for i, channels in enumerate(self.stage_channels):
            for j in range(self.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(channels, stride, self.activation, name=f"stage{i}_block{j}")(
                    x, train
                )
        x = x.mean(axis=(1, 2))
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name="classifier")(x)
