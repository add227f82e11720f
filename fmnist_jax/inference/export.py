"""Serialize a classifier's `predict_proba` with `jax.export` (StableHLO) to serve without model code."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from jax import export as jax_export  # a submodule to import by name before jax 0.8

from fmnist_jax.errors import writing
from fmnist_jax.inference import IMAGE_SHAPE, Classifier

FILENAME = "predict_proba.jax_exported"


def export(classifier: Classifier, path: str) -> None:
    """Writes uint8 [batch, 28, 28, 1] -> float32 [batch, 10] for any batch size, on CPU, GPU or TPU."""
    (batch,) = jax_export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, *IMAGE_SHAPE), jnp.uint8)
    exported = jax_export.export(jax.jit(classifier.proba_fn), platforms=("cpu", "cuda", "tpu"))(
        spec
    )
    with writing(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "wb") as f:
            f.write(exported.serialize())


def load(path: str) -> jax_export.Exported:
    """The exported function; call it as `load(path).call(uint8_images)`."""
    with open(path, "rb") as f:
        return jax_export.deserialize(bytearray(f.read()))
