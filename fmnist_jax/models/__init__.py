"""Models by name: adding one is adding a module here and a line in `MODELS`.

Models are Flax NNX modules; `create` returns them as a `Model`, pure functions over explicit
weights, the form the compiled epoch, the run axis, sharding, checkpoints and export work with.
"""
# ruff: noqa: E402 - the imports after `flax.nnx` wait for the guard around it (below)

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx
from ml_collections import ConfigDict

from fmnist_jax.errors import UserError
from fmnist_jax.models.cnn import CNN
from fmnist_jax.models.layers import Dropout, formulation_for
from fmnist_jax.models.mlp import MLP
from fmnist_jax.models.resnet import ResNet
from fmnist_jax.shapes import IMAGE_SHAPE, PyTree

MODELS: dict[str, type[nnx.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}
_NOT_SETTINGS = ("self", "rngs", "image_shape")
_ABSTRACT: dict[tuple[type[nnx.Module], str], tuple[nnx.GraphDef, nnx.State, nnx.State]] = {}


def _weights(params: nnx.State, batch_stats: nnx.State) -> dict[str, PyTree]:
    return {"params": params.to_pure_dict(), "batch_stats": batch_stats.to_pure_dict()}


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax NNX module as pure functions over its weights (`init`, `apply`).

    The weights live outside the module as plain nested dicts, `{"params": ..., "batch_stats":
    ...}`, which `jax.jit`, `jax.vmap`, Optax, shardings and Orbax take as they are. `apply` merges
    them into the module inside the traced function: the functional core (split once, pure
    functions, merge at the edges) that Flax's performance guide recommends over calling `nnx.jit`
    per step, and free at run time (merging happens while tracing).
    """

    module_class: type[nnx.Module]
    settings: dict[str, Any]

    def build(self, rngs: nnx.Rngs) -> nnx.Module:
        """A new module, its weights drawn from `rngs`."""
        return self.module_class(**self.settings, image_shape=IMAGE_SHAPE, rngs=rngs)

    @property
    def _abstract(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        """(graph, parameter shapes, batch-statistic shapes) of a module built without memory. Once
        per process and model: tracing the build takes time, and a run's programs, model table,
        classifier and export each start from a `Model` of the same settings."""
        key = (self.module_class, json.dumps(self.settings, sort_keys=True))
        if key not in _ABSTRACT:
            _ABSTRACT[key] = nnx.split(
                nnx.eval_shape(lambda: self.build(nnx.Rngs(0))), nnx.Param, nnx.BatchStat
            )
        return _ABSTRACT[key]

    @property
    def graphdef(self) -> nnx.GraphDef:
        """The module's structure, from a module built without memory."""
        return self._abstract[0]

    def shapes(self) -> dict[str, PyTree]:
        """The shapes and dtypes of `init`'s weights, computing nothing."""
        return _weights(*self._abstract[1:])

    def init(
        self, key: jax.Array, settings: Mapping[str, jax.Array] | None = None
    ) -> dict[str, PyTree]:
        """Initial weights drawn from `key`; with a run's own traced widths among `settings` (the
        model's `PER_RUN`), those of that narrower model inside this one (`layers.narrowed`)."""
        module = self.build(nnx.Rngs(key))
        widths = self._widths(settings)
        if widths:
            module.narrow(widths)
        return _weights(*nnx.split(module, nnx.Param, nnx.BatchStat)[1:])

    def _widths(self, settings: Mapping[str, jax.Array] | None) -> dict[str, jax.Array]:
        """The run's own widths among `settings`: those the model class declares in `PER_RUN`."""
        return {k: v for k, v in (settings or {}).items() if k in per_run(self.module_class)}

    def module(self, variables: dict[str, PyTree]) -> nnx.Module:
        """The module holding `variables`, to inspect or call it the NNX way."""
        return nnx.merge(self.graphdef, variables["params"], variables.get("batch_stats", {}))

    def apply(
        self,
        variables: dict[str, PyTree],
        images: jax.Array,
        train: bool = False,
        dropout_key: jax.Array | None = None,
        settings: Mapping[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, PyTree]:
        """(logits, the batch-norm statistics after the call: updated when `train`).

        `settings` gives model settings a run's own traced value (a sweep's or a search trial's):
        dropout rates (e.g. "dropout_rate", each `Dropout` layer naming its own), and the widths
        the model class declares in `PER_RUN`, which the module `use`s inside its own.
        """
        settings = settings or {}
        module = self.module(variables)
        for _, layer in nnx.iter_graph(module):  # nnx.iter_modules is newer than flax 0.12.0
            if isinstance(layer, Dropout) and layer.setting in settings:
                layer.rate = nnx.data(settings[layer.setting])  # a traced value, not structure
        widths = self._widths(settings)
        if widths:
            module.use(widths)
        logits = module(images, train=train, dropout_key=dropout_key)
        return logits, nnx.state(module, nnx.BatchStat).to_pure_dict()


def per_run(module_class: type[nnx.Module]) -> tuple[str, ...]:
    """The settings a model class lets a run give its own value inside one program, masked inside
    its widest (`PER_RUN`, with the methods `narrow` and `use`); none where it declares none."""
    return getattr(module_class, "PER_RUN", ())


def searchable(model_config: ConfigDict) -> tuple[str, ...]:
    """`per_run` of the model `model_config` names, as config keys ("model.hidden_sizes")."""
    return tuple(f"model.{key}" for key in per_run(_class_and_settings(model_config)[0]))


def check(model_config: ConfigDict) -> None:
    """Raises `UserError` if `model_config` names no model, or a setting its model does not have.
    Builds nothing: a run checks this before it writes to its workdir."""
    _class_and_settings(model_config)


def create(model_config: ConfigDict, backend: str | None = None) -> Model:
    """Builds `MODELS[model_config.name]` from the other keys of `model_config`, with the ops chosen
    for `backend` (default: the one JAX runs on) where the config says "auto"."""
    cls, settings = _class_and_settings(model_config)
    if settings.get("formulation") == "auto":
        settings["formulation"] = formulation_for(backend or jax.default_backend())
    return Model(module_class=cls, settings=settings)


def _class_and_settings(model_config: ConfigDict) -> tuple[type[nnx.Module], dict[str, Any]]:
    name = model_config.name
    if name not in MODELS:
        raise UserError(f"Unknown model.name={name!r}; choose one of {sorted(MODELS)}.")
    cls = MODELS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - set(_NOT_SETTINGS)
    settings = {  # a restored config's JSON lists are the tuples it was written from
        k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items() if k != "name"
    }
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise UserError(
            f"model.name={name!r} has no setting {', '.join(unknown)}; its settings are {sorted(accepted)}."
        )
    return cls, settings
