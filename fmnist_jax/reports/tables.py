"""A Keras-style `model.summary()` table: layer, output shape, parameters, total."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def model_table(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[str, int]:
    """Returns (the printable table, the number of trainable parameters); runs nothing on the device."""

    kinds = {}

    def capture(module: nn.Module, method_name: str) -> bool:
        kinds[module.path] = type(module).__name__
        return method_name == "__call__"

    def forward(x):
        v = model.init(jax.random.key(0), x, train=False)
        _, state = model.apply(
            v, x, train=False, capture_intermediates=capture, mutable=["intermediates"]
        )
        return v, state["intermediates"]

    variables, intermediates = jax.eval_shape(forward, jnp.zeros((1, *image_shape), jnp.float32))
    params = traverse_util.flatten_dict(variables["params"])
    outputs = traverse_util.flatten_dict(intermediates)
    rows = [("Layer", "Output shape", "Param #")]
    for module_path, kind in kinds.items():  # call order
        is_container = any(
            p[: len(module_path)] == module_path for p in kinds if len(p) > len(module_path)
        )
        if not module_path or is_container:
            continue
        output = jax.tree.leaves(outputs[(*module_path, "__call__")][0])[
            0
        ]  # a (maps, bias) pair shows the maps
        shape = "(None, " + ", ".join(str(d) for d in output.shape[1:]) + ")"
        n = sum(int(np.prod(v.shape)) for p, v in params.items() if p[:-1] == module_path)
        rows.append(("/".join(module_path) + f" ({kind})", shape, f"{n:,}"))
    total = count_params(variables["params"])
    non_trainable = count_params(variables.get("batch_stats", {}))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    rule = "-" * (sum(widths) + 4)

    def line(r):
        return f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"

    lines = [
        f'Model: "{type(model).__name__}"',
        rule,
        line(rows[0]),
        rule,
        *map(line, rows[1:]),
        rule,
        f"Total params: {total:,}",
    ]
    if non_trainable:
        lines.append(f"Non-trainable (batch-norm statistics): {non_trainable:,}")
    return "\n".join(lines), total
