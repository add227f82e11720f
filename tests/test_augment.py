"""On-device augmentation: what each transform may and may not do to a batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax.engine.augment import Augment


def _batch(n=64):
    rng = np.random.default_rng(0)
    return jnp.asarray(
        rng.integers(1, 256, (n, 28, 28, 1)), jnp.float32
    )  # no zero pixels: padding is recognizable


@pytest.mark.slow
def test_disabled_augmentation_is_the_identity_and_enabled_is_reproducible():
    x = _batch()
    assert not Augment().enabled
    np.testing.assert_array_equal(Augment()(x, jax.random.key(0)), x)
    augment = Augment(crop_padding=4, flip=True, erasing=0.5)
    np.testing.assert_array_equal(augment(x, jax.random.key(1)), augment(x, jax.random.key(1)))
    assert not np.array_equal(augment(x, jax.random.key(1)), augment(x, jax.random.key(2)))


def test_random_crop_is_a_shift_with_black_fill():
    x = _batch(16)
    y = np.asarray(Augment(crop_padding=3)(x, jax.random.key(0)))
    padded = np.pad(np.asarray(x), ((0, 0), (3, 3), (3, 3), (0, 0)))
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if np.array_equal(y[i], padded[i, dy : dy + 28, dx : dx + 28])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 4  # offsets differ between examples


def test_flip_mirrors_about_half_the_images_left_right():
    x = _batch(256)
    y = np.asarray(Augment(flip=True)(x, jax.random.key(0)))
    flipped = np.array([np.array_equal(y[i], np.asarray(x)[i, :, ::-1]) for i in range(len(x))])
    kept = np.array([np.array_equal(y[i], np.asarray(x)[i]) for i in range(len(x))])
    assert np.all(flipped | kept) and 0.35 < flipped.mean() < 0.65


@pytest.mark.slow
@pytest.mark.parametrize("probability", [0.0, 0.5, 1.0])
def test_random_erasing_replaces_one_rectangle_in_the_expected_share_of_images(probability):
    x = _batch(256)
    y = np.asarray(Augment(erasing=probability)(x, jax.random.key(0)))
    changed = (y != np.asarray(x))[..., 0]
    erased = changed.any(axis=(1, 2))
    assert abs(erased.mean() - probability) < 0.1
    for mask in changed[erased]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.mean() > 0.95  # a filled rectangle (noise may equal a pixel by chance)
        assert 0.01 <= box.size / mask.size <= 0.4
    assert y.min() >= 0 and y.max() <= 255
