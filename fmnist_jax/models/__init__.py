"""Models by name: adding one is adding a module here and a line in `MODELS`."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from fmnist_jax.errors import UserError
from fmnist_jax.models.cnn import CNN
from fmnist_jax.models.layers import formulation_for
from fmnist_jax.models.mlp import MLP
from fmnist_jax.models.resnet import ResNet

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}


def create(model_config: ConfigDict, backend: str | None = None) -> nn.Module:
    """Builds `MODELS[model_config.name]` from the other keys of `model_config`, with the ops chosen
    for `backend` (default: the one JAX runs on) where the config says "auto"."""
    name = model_config.name
    if name not in MODELS:
        raise UserError(f"Unknown model.name={name!r}; choose one of {sorted(MODELS)}.")
    cls = MODELS[name]
    accepted = {
        f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")
    }
    kwargs = {k: v for k, v in model_config.items() if k != "name"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UserError(
            f"model.name={name!r} has no setting {', '.join(unknown)}; its settings are {sorted(accepted)}."
        )
    if kwargs.get("formulation") == "auto":
        kwargs["formulation"] = formulation_for(backend or jax.default_backend())
    return cls(**kwargs)
