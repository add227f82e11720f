"""The names every layer shares: the shape of one image and the alias for nested arrays."""

from typing import Any

# One Fashion-MNIST image, height x width x channels (NHWC batches).
IMAGE_SHAPE = (28, 28, 1)
# A nested structure of arrays (params, optimizer state, checkpoint items).
PyTree = Any
