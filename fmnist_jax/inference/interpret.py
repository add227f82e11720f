"""What a trained network sees: its layers' outputs, attributions and embeddings, as pure functions.

Every function takes the model, its weights (`{"params", "batch_stats"}`), the input normalizer and
a batch of uint8 images, and is traced once per batch shape (`Classifier` batches and compiles
them like `predict_proba`). The layers' outputs are the model's own: its modules record them with
Flax NNX's `sow` while `explaining` is set (`models.layers.expose`), so no second forward pass is
written here.

- `activations`: every recorded layer output by name.
- `gradients`: the gradient of a class's logit with respect to the input pixels (saliency).
- `path_gradients`: Sundararajan et al.'s integrated gradients from a baseline (black by default),
  with the trapezoid rule over `steps` points, a chunk of points at a time; the attributions sum
  to the logit's difference between the image and the baseline, up to the rule's error.
- `grad_cam`: Selvaraju et al.'s class map over the last convolutional feature map.
- `embed`: the penultimate features, what the classifier layer sees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax.engine.normalizer import Normalizer
from fmnist_jax.models import Model
from fmnist_jax.shapes import PyTree

METHODS = ("gradients", "integrated_gradients", "grad_cam")
MAX_STEPS = 1000  # integrated gradients' steps: Sundararajan et al. find 20-300 enough


def explaining(model: Model, weights: dict[str, PyTree]) -> nnx.Module:
    """The module holding `weights`, set to record its layers' outputs when called."""
    module = model.module(weights)
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module):
            node.explaining = True
    return module


def _recorded(module: nnx.Module, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(logits, {dotted name: recorded output}) of one call of an explaining module."""
    logits = module(x)
    state = nnx.pop(module, nnx.All(nnx.Intermediate, nnx.Not(nnx.Perturbation)))
    flat = {".".join(map(str, path)): value for path, value in nnx.to_flat_state(state)}
    return logits, {name: values[-1] for name, values in sorted(flat.items())}


def activations(
    model: Model, weights: dict[str, PyTree], normalizer: Normalizer, images: jax.Array
) -> dict[str, jax.Array]:
    """Every layer output the model records, by name (e.g. `head.hidden0`, `block1`), and
    `logits`, for a batch of uint8 images."""
    logits, recorded = _recorded(explaining(model, weights), normalizer(images))
    return {**recorded, "logits": logits}


def embed(
    model: Model, weights: dict[str, PyTree], normalizer: Normalizer, images: jax.Array
) -> jax.Array:
    """The penultimate features `[N, D]` of a batch of uint8 images."""
    recorded = activations(model, weights, normalizer, images)
    return next(v for name, v in recorded.items() if name.endswith("features"))


def _target_logit(model: Model, weights: dict[str, PyTree], targets: jax.Array):
    """x (normalized images) -> the sum over the batch of each image's target logit: its gradient
    is every image's own gradient, since images do not interact at inference."""

    def f(x: jax.Array) -> jax.Array:
        logits, _ = model.apply(weights, x)
        return jnp.take_along_axis(logits, targets[:, None], axis=1).sum()

    return f


def gradients(
    model: Model,
    weights: dict[str, PyTree],
    normalizer: Normalizer,
    images: jax.Array,
    targets: jax.Array,
) -> jax.Array:
    """d logit[target] / d pixel, `[N, 28, 28, 1]`, pixels scaled to [0, 1]."""
    return jax.grad(lambda p: _target_logit(model, weights, targets)(normalizer(p * 255.0)))(
        images.astype(jnp.float32) / 255.0
    )


def path_gradients(
    model: Model,
    weights: dict[str, PyTree],
    normalizer: Normalizer,
    images: jax.Array,
    targets: jax.Array,
    baseline: jax.Array,
    steps: int,
    first: jax.Array,
    count: int,
) -> jax.Array:
    """Integrated gradients' path sum over `count` of its `steps` + 1 points, from point `first`
    on: the gradients of logit[target] on the straight path from `baseline` (uint8, broadcast to
    the images) to the images, weighted by the trapezoid rule (points past the path weigh 0).
    Summed over every chunk of points and multiplied by (image - baseline), pixels in [0, 1],
    they are the attributions `[N, 28, 28, 1]`; chunks keep each compiled call short, so a long
    path stops when asked."""
    x = images.astype(jnp.float32) / 255.0
    base = jnp.broadcast_to(baseline.astype(jnp.float32) / 255.0, x.shape)
    f = _target_logit(model, weights, targets)
    grad = jax.grad(lambda p: f(normalizer(p * 255.0)))

    def add(total: jax.Array, k: jax.Array) -> tuple[jax.Array, None]:
        weight = jnp.where(k <= steps, jnp.where((k == 0) | (k == steps), 0.5, 1.0), 0.0) / steps
        return total + weight * grad(base + (k / steps) * (x - base)), None

    total, _ = jax.lax.scan(add, jnp.zeros_like(x), first + jnp.arange(count))
    return total


def conv_map_name(model: Model, weights: dict[str, PyTree], normalizer: Normalizer) -> str | None:
    """The name of the last recorded convolutional map (4-D output), or None for an MLP."""
    shapes = jax.eval_shape(
        lambda: activations(model, weights, normalizer, jnp.zeros((1, 28, 28, 1), jnp.uint8))
    )
    maps = [name for name, s in shapes.items() if len(s.shape) == 4]
    return maps[-1] if maps else None


def grad_cam(
    model: Model,
    weights: dict[str, PyTree],
    normalizer: Normalizer,
    images: jax.Array,
    targets: jax.Array,
    map_name: str,
) -> jax.Array:
    """Grad-CAM of logit[target] over the map `map_name` (`[N, H, W, C]`): ReLU of the map's
    channels weighted by their mean gradients, `[N, H, W]`, non-negative."""
    module = explaining(model, weights)
    x = normalizer(images)
    _, recorded = _recorded(module, x)  # creates the zero perturbations
    graphdef, perturbations, rest = nnx.split(module, nnx.Perturbation, ...)
    path = (*map_name.split(".")[:-1], map_name.split(".")[-1] + "_handle")

    def logit(p: nnx.State) -> jax.Array:
        logits = nnx.merge(graphdef, p, rest)(x)
        return jnp.take_along_axis(logits, targets[:, None], axis=1).sum()

    grads = nnx.to_flat_state(jax.grad(logit)(perturbations))
    gradient = next(value for p, value in grads if tuple(map(str, p)) == path)
    gradient = gradient.value if hasattr(gradient, "value") else gradient
    channel_weights = gradient.mean(axis=(1, 2), keepdims=True)
    return jax.nn.relu((channel_weights * recorded[map_name]).sum(-1))


def first_layer_kernel(model: Model, weights: dict[str, PyTree]) -> jax.Array:
    """The kernel of the layer that reads the image: `[784, units]` for an MLP, `[kh, kw, 1,
    channels]` for a conv model (the only kernel with one input channel or 784 inputs)."""
    module = model.module(weights)
    for _, node in nnx.iter_graph(module):
        kernel = getattr(node, "kernel", None)
        if isinstance(kernel, nnx.Param) and kernel.value.shape[-2] in (1, 784):
            return kernel.value
    raise ValueError("the model has no layer that reads the image")
