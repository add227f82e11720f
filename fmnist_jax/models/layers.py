"""Small building blocks shared by the models."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax.errors import UserError

# Keras' defaults, so the reference notebooks' recipes train the same way here.
kernel_init = nnx.initializers.xavier_uniform()

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation by name."""
    if name not in ACTIVATIONS:
        raise UserError(f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def expose(module: nnx.Module, name: str, x: jax.Array) -> jax.Array:
    """`x`; while the module is explained (`interpret.explaining` sets `explaining`), also recorded
    as intermediate `name` (`nnx.Intermediate`), plus a zero perturbation `<name>_handle`: the
    handle by which gradients with respect to it are taken (`Module.perturb`). Training and
    inference never set the flag, so their programs stay exactly as they were."""
    if getattr(module, "explaining", False):
        module.sow(nnx.Intermediate, name, x)
        x = module.perturb(f"{name}_handle", x)
    return x


def layer_key(key: jax.Array | None, index: int) -> jax.Array | None:
    """The key of a model's `index`-th dropout layer (None when not training)."""
    return None if key is None else jax.random.fold_in(key, index)


# Non-decreasing activations commute with max pooling: act(max(x)) == max(act(x)).
MONOTONE = frozenset({"relu", "tanh", "sigmoid", "elu", "leaky_relu"})
FORMULATIONS = ("auto", "native", "cpu")


def formulation_for(backend: str) -> str:
    """What "auto" means on `backend`: the XLA:CPU-friendly pooling on CPU, the native ops elsewhere."""
    return "cpu" if backend == "cpu" else "native"


def use_cpu_formulation(formulation: str) -> bool:
    """Whether to use the XLA:CPU-friendly formulation of pooling ("auto": on the backend JAX runs on)."""
    if formulation not in FORMULATIONS:
        raise UserError(
            f"Unknown formulation {formulation!r}; choose one of {', '.join(FORMULATIONS)}."
        )
    return (
        formulation_for(jax.default_backend()) if formulation == "auto" else formulation
    ) == "cpu"


def _windows(x: jax.Array, size: int) -> jax.Array:
    """NHWC -> [n, h/size, size, w/size, size, c], dropping the odd row/column like 'VALID' pooling."""
    n, h, w, c = x.shape
    return x[:, : h // size * size, : w // size * size, :].reshape(
        n, h // size, size, w // size, size, c
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_cpu(x: jax.Array, size: int) -> jax.Array:
    return _windows(x, size).max(axis=(2, 4))


def _max_pool_cpu_fwd(
    x: jax.Array, size: int
) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
    windows = _windows(x, size)
    pooled = windows.max(axis=(2, 4))
    # Keep only where the first maximum of each window is (row-major), as the native gradient does.
    first = jnp.full(pooled.shape, size * size - 1, jnp.int32)
    for k in reversed(range(size * size - 1)):
        first = jnp.where(windows[:, :, k // size, :, k % size, :] == pooled, k, first)
    return pooled, (first, x.shape)


def _max_pool_cpu_bwd(
    size: int, residuals: tuple[jax.Array, tuple[int, ...]], g: jax.Array
) -> tuple[jax.Array]:
    first, shape = residuals
    positions = jnp.arange(size * size, dtype=first.dtype).reshape(size, size)[
        None, None, :, None, :, None
    ]
    grads = jnp.where(
        first[:, :, None, :, None, :] == positions, g[:, :, None, :, None, :], 0
    ).astype(g.dtype)
    n, hp, _, wp, _, c = grads.shape
    grads = grads.reshape(n, hp * size, wp * size, c)
    return (jnp.pad(grads, ((0, 0), (0, shape[1] - hp * size), (0, shape[2] - wp * size), (0, 0))),)


_max_pool_cpu.defvjp(_max_pool_cpu_fwd, _max_pool_cpu_bwd)


def pooled_size(size: int, kind: str, window: int) -> int:
    """The height (or width) of a `size` map after `pool`."""
    return size if kind == "none" or window == 1 else size // window


def pool(x: jax.Array, kind: str, size: int, formulation: str = "auto") -> jax.Array:
    """Non-overlapping `size`x`size` pooling of NHWC `x` (floor of odd sizes, like Keras 'valid').

    The native ops (`reduce_window`, whose max gradient is a select-and-scatter) are the fast path
    on GPU and TPU. On XLA:CPU that gradient is slow, so there max pooling is a reshape and a
    reduction whose gradient scatters through the stored index of each window's first maximum
    (one pass; same numbers as the native gradient; measured on the reference CNN's step at batch 64).
    """
    if kind == "none" or size == 1:
        return x
    cpu = use_cpu_formulation(formulation)
    if kind == "max":
        return _max_pool_cpu(x, size) if cpu else nnx.max_pool(x, (size, size), (size, size))
    if kind == "avg":
        return (
            _windows(x, size).mean(axis=(2, 4))
            if cpu
            else nnx.avg_pool(x, (size, size), (size, size))
        )
    raise UserError(f"Unknown pooling {kind!r}; choose 'max', 'avg' or 'none'.")


def leading(size: int, count: jax.Array | None) -> jax.Array:
    """`[size]` booleans, true for the first `count` (None: all)."""
    return jnp.arange(size) < (size if count is None else count)


def narrowed(kernel: jax.Array, rows: jax.Array | None, columns: jax.Array) -> jax.Array:
    """A Glorot-uniform `kernel` (`[..., in, out]`, a dense layer's or a convolution's) made the
    initial kernel of a narrower layer that reads the `rows` (`[in]` booleans; None: all) and
    writes the `columns` (`[out]`) inside it: the rest zero, and the used weights rescaled from
    this layer's limit, sqrt(6 / (fan_in + fan_out)), to that of the narrower layer's fans (the
    receptive field multiplies both fans alike), so that they are drawn as a genuine narrower
    layer's are. A search's trials of several widths train inside the widest model this way: the
    zeros receive no gradient, so the trial computes and learns what the narrower model does."""
    fan_in, fan_out = kernel.shape[-2:]
    rows = jnp.ones(fan_in, bool) if rows is None else rows
    scale = jnp.sqrt((fan_in + fan_out) / (rows.sum() + columns.sum()))
    return jnp.where(rows[:, None] & columns, kernel * scale, 0.0)


def silence(x: jax.Array, width: jax.Array | None) -> jax.Array:
    """`x` with its features (last axis) beyond `width` zero: the units a narrower trial has not."""
    return x if width is None else jnp.where(jnp.arange(x.shape[-1]) < width, x, 0.0)


class Conv(nnx.Module):
    """A SAME-padded convolution with `nnx.Conv`'s parameters, returning the bias apart.

    Returning the bias lets the caller add it after max pooling (exact, as max(x + b) = max(x) + b),
    on a quarter of the activations.
    """

    def __init__(
        self, in_features: int, features: int, kernel_size: int, *, use_bias: bool, rngs: nnx.Rngs
    ):
        shape = (kernel_size, kernel_size, in_features, features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((features,))) if use_bias else None

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel.value.astype(x.dtype),
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y, None if self.bias is None else self.bias.value


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` whose output keeps the input's dtype.

    Under bfloat16 compute the running statistics stay float32 (bfloat16 cannot hold their 1%
    updates: on an H100, configs/fast.py lost 0.027 test accuracy that way); without the cast they
    would promote the rest of the network to float32.
    """

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        return super().__call__(x, use_running_average=use_running_average).astype(x.dtype)


class Dropout(nnx.Dropout):
    """`nnx.Dropout` that names the model setting its rate comes from (`setting`), so that a sweep
    can give each run its own rate (`Model.apply(settings=...)`): a traced rate draws the same mask
    and scales the same way as nnx's Python one, and a traced 0 keeps every input unchanged."""

    def __init__(self, rate: float, setting: str):
        super().__init__(rate)
        self.setting = setting

    def __call__(self, inputs: jax.Array, deterministic: bool, rngs: jax.Array | None) -> jax.Array:
        if isinstance(self.rate, float) or deterministic:
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(rngs, p=keep, shape=inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))


def dropout(rate: float, setting: str = "dropout_rate") -> Dropout | None:
    """The dropout layer of the model setting `setting`, or None at rate 0."""
    return Dropout(rate, setting) if rate > 0 else None


class DenseStack(nnx.Module):
    """Hidden dense layers (activation, optional dropout) followed by the classifier layer.

    A search trains trials of several widths in one program, each inside the widest stack
    (`narrow`, and `widths` while it trains): its units beyond its own widths start at zero and
    are held at zero, so the trial computes and learns exactly what a stack of its widths would.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: tuple[int, ...],
        activation: str,
        dropout_rate: float,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
    ):
        sizes = (in_features, *hidden_sizes, num_classes)
        self.activation = activation
        self.num_layers = len(sizes) - 1
        # The names Flax Linen gave these layers: checkpoints of earlier releases restore as they are.
        for i in range(self.num_layers):
            layer = nnx.Linear(sizes[i], sizes[i + 1], kernel_init=kernel_init, rngs=rngs)
            setattr(self, f"Dense_{i}", layer)
        self.dropout = dropout(dropout_rate)
        # The hidden widths in use, `[num_hidden]` (a trial's, traced; see `Model.apply`); None: all.
        self.widths = None

    def narrow(self, widths: jax.Array | None, used_inputs: jax.Array | None = None) -> None:
        """Makes these weights the initial weights of a stack of hidden `widths` (None: these)
        reading the `used_inputs` (`[in_features]` booleans; None: all): see `narrowed`."""
        for i in range(self.num_layers):
            layer = getattr(self, f"Dense_{i}")
            fan_in, fan_out = layer.kernel.value.shape
            rows = (
                used_inputs
                if i == 0
                else leading(fan_in, None if widths is None else widths[i - 1])
            )
            last = i == self.num_layers - 1
            columns = leading(fan_out, None if last or widths is None else widths[i])
            layer.kernel.value = narrowed(layer.kernel.value, rows, columns)
            layer.bias.value = jnp.where(columns, layer.bias.value, 0.0)

    def __call__(self, x: jax.Array, train: bool, key: jax.Array | None = None) -> jax.Array:
        act = activation(self.activation)
        for i in range(self.num_layers - 1):
            x = act(getattr(self, f"Dense_{i}")(x))
            x = silence(x, None if self.widths is None else self.widths[i])
            x = expose(self, f"hidden{i}", x)
            if self.dropout is not None:
                x = self.dropout(x, deterministic=not train, rngs=layer_key(key, i))
        x = expose(self, "features", x)  # what the classifier layer sees: the embedding
        return getattr(self, f"Dense_{self.num_layers - 1}")(x)
