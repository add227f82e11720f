"""The model's summary table (Flax's `nnx.tabulate`: layer, type, shapes, parameters) and its
parameter count; nothing runs on the device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmnist_jax.models import Model
from fmnist_jax.shapes import PyTree

# Plain text at a width that fits the columns, for log files as well as terminals.
_CONSOLE = {"width": 150, "force_terminal": False, "color_system": None, "soft_wrap": True}
_MAX_ROWS = 16  # deeper levels of larger models (the ResNet's blocks' layers) are left out


def count_params(tree: PyTree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def model_table(model: Model, image_shape: tuple[int, ...]) -> tuple[str, int]:
    """(the printable table, the number of trainable parameters).

    Built inside `jax.eval_shape`: `nnx.tabulate` calls the model through `jax.jit`, which would
    otherwise compile and run it (seconds for the ResNet on a CPU); traced, it runs nothing.
    """
    out = {}

    def tabulate() -> None:
        module = model.build(nnx.Rngs(0))
        depths = sorted(len(path) for path, _ in module.iter_modules() if path)
        depth = max((d for d in depths if sum(x <= d for x in depths) <= _MAX_ROWS), default=1)
        out["table"] = nnx.tabulate(
            module, jnp.zeros((1, *image_shape)), depth=depth, console_kwargs=_CONSOLE
        )
        out["params"] = count_params(nnx.state(module, nnx.Param))

    jax.eval_shape(tabulate)
    return out["table"].rstrip(), out["params"]
