"""On-device data augmentation of a training batch, inside the compiled step: no host work.

Applied to raw pixels (0-255) before normalization, so padding and erasing use the true black
background whatever the normalization. Each example draws its own random choices from the step's
key, so a run stays reproducible and resumable.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random crop after zero padding, horizontal flip, random erasing (Zhong et al. 2017)."""

    crop_padding: int = (
        0  # pixels of black border added before a random crop back to the input size
    )
    flip: bool = False  # mirror left-right with probability 1/2
    erasing: float = (
        0.0  # probability of erasing one random rectangle (2-33% of the area) with noise
    )

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.erasing > 0

    def __call__(
        self, images: jax.Array, key: jax.Array, erasing: jax.Array | None = None
    ) -> jax.Array:
        """NHWC images (any dtype) -> float32 augmented images of the same shape; `erasing` is a
        run's own erasing probability (a sweep's, traced), in place of the configured one."""
        x = images.astype(jnp.float32)
        crop_key, flip_key, erase_key = jax.random.split(key, 3)
        if self.crop_padding > 0:
            x = random_crop(x, crop_key, self.crop_padding)
        if self.flip:
            mirror = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
            x = jnp.where(mirror, x[:, :, ::-1, :], x)
        if self.erasing > 0:
            x = random_erasing(x, erase_key, self.erasing if erasing is None else erasing)
        return x


def random_crop(x: jax.Array, key: jax.Array, padding: int) -> jax.Array:
    """Pads each image with `padding` zeros per side and crops it back at a random offset."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_erasing(
    x: jax.Array, key: jax.Array, probability: float, max_value: float = 255.0
) -> jax.Array:
    """With `probability` per image, replaces a random rectangle (2-33% of the area, aspect 0.3-3.3) by uniform noise."""
    n, h, w, _ = x.shape
    keys = jax.random.split(key, 6)
    area = jax.random.uniform(keys[0], (n,), minval=0.02, maxval=0.33) * h * w
    log_aspect = jax.random.uniform(keys[1], (n,), minval=jnp.log(0.3), maxval=jnp.log(3.3))
    height = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_aspect))), 1, h).astype(jnp.int32)
    width = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_aspect))), 1, w).astype(jnp.int32)
    top = (jax.random.uniform(keys[2], (n,)) * (h - height + 1)).astype(jnp.int32)
    left = (jax.random.uniform(keys[3], (n,)) * (w - width + 1)).astype(jnp.int32)
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (
        (rows >= top[:, None, None])
        & (rows < (top + height)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + width)[:, None, None])
    )
    erase = inside & jax.random.bernoulli(keys[4], probability, (n, 1, 1))
    noise = jax.random.uniform(keys[5], x.shape, maxval=max_value)
    return jnp.where(erase[..., None], noise, x)
