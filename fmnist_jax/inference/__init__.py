"""Inference: a trained model restored as a `Classifier` (here), its serialized export
(`export`), what it sees (`interpret`: activations, attributions, embeddings) and image files
turned into its inputs (`images`).

Restore a trained model for inference: `load(workdir)` -> `Classifier.predict_proba(images)`.

Only what inference needs is read from the checkpoint (weights or their moving average, batch-norm
statistics, the input normalization, the config, the class names), on whatever backend is present.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fmnist_jax import config as config_lib
from fmnist_jax import engine, models
from fmnist_jax.config import run_axis
from fmnist_jax.engine.normalizer import Normalizer
from fmnist_jax.errors import UserError
from fmnist_jax.inference import interpret
from fmnist_jax.records import checkpoint, metrics
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.shapes import IMAGE_SHAPE, PyTree

_BATCH = 256  # predictions run in fixed-size batches: one compile for any number of images
_PATH_CHUNK = 16  # integrated gradients' path points per compiled call


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A restored model with its config and class names."""

    config: ml_collections.ConfigDict
    class_names: tuple[str, ...]
    epoch: int
    variables: dict

    @classmethod
    def of_run(
        cls,
        config: ml_collections.ConfigDict,
        class_names: Sequence[str],
        epoch: int,
        model_item: dict[str, PyTree],
        run: int,
    ) -> Classifier:
        """Run `run` of a checkpoint's model item whose weights carry the run axis (a sweep
        member's config with its values set)."""
        variables = one_run(model_item, run)
        return cls(
            config=config_lib.with_values(config, run_axis.run_values(config, run)),
            class_names=tuple(class_names),
            epoch=epoch,
            variables=variables,
        )

    @functools.cached_property
    def _model(self):
        return models.create(self.config.model)

    @functools.cached_property
    def _normalizer(self) -> Normalizer:
        return Normalizer.from_tree(self.variables.get("normalizer", {}))

    @functools.cached_property
    def _weights(self) -> dict[str, Any]:
        """What the forward pass reads besides the images: the evaluated weights, batch statistics."""
        return {
            "params": engine.eval_params(self.variables),
            "batch_stats": self.variables["batch_stats"],
        }

    def proba_fn(self, images: jax.Array) -> jax.Array:
        """Pure [N, 28, 28, 1] images (uint8 0-255, or float in [0, 1]) -> [N, 10] probabilities,
        with this classifier's weights built in (what `export` serializes)."""
        return self._probabilities(self._weights, images)

    def _probabilities(self, weights: dict[str, Any], images: jax.Array) -> jax.Array:
        x = images if images.dtype == jnp.uint8 else images * 255.0
        flip = self.config.get("test_time_flip", False)
        return jnp.exp(
            engine.log_probabilities(
                self._model, self._normalizer, weights["params"], weights["batch_stats"], x, flip
            )
        )

    @functools.cached_property
    def _jitted(self):
        # The weights as arguments, not constants: one program per model shape, which the
        # compilation cache keeps for every later model of that shape. With the weights built in,
        # every trained model would compile its own and leave a cache entry as large as its
        # weights.
        return jax.jit(self._probabilities)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of images.

        Args:
            images: N images as NHWC [N, 28, 28, 1] (or HWC, NHW, HW, or rows of 784 pixels),
                integers in 0-255 or floats in [0, 1]; `images.read(path)` converts a file.

        Returns:
            float32 [N, 10], each row summing to 1.

        Raises:
            UserError: another shape, or values outside those ranges (e.g. floats in 0-255).
        """
        x = as_batch(images)
        weights = jax.device_put(self._weights)  # once, not per batch
        out = []
        for start in range(0, len(x), _BATCH):
            chunk = x[start : start + _BATCH]
            padded = np.concatenate(
                [chunk, np.zeros((_BATCH - len(chunk), *IMAGE_SHAPE), chunk.dtype)]
            )
            out.append(np.asarray(self._jitted(weights, padded))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The most probable class index of each image (see `predict_proba`)."""
        return self.predict_proba(images).argmax(-1)

    def activations(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every layer output the model records, by name (the MLP's `head.hidden0`, a CNN's
        `block0`, `block1`, ..., every model's `head.features` or `features`, and `logits`), for
        images as `predict_proba` takes them; each `[N, ...]`."""
        program = jax.jit(lambda w, x: interpret.activations(self._model, w, self._normalizer, x))
        return self._batched(program, images)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """The penultimate features `[N, D]`: what the classifier layer sees."""
        program = self._program(
            ("embed",), lambda w, x: interpret.embed(self._model, w, self._normalizer, x)
        )
        return self._batched(program, images)

    def attributions(
        self,
        images: np.ndarray,
        method: str = "integrated_gradients",
        targets: np.ndarray | None = None,
        baseline: np.ndarray | None = None,
        steps: int = 64,
    ) -> np.ndarray:
        """How much each input pixel (or, for Grad-CAM, each place of the last convolutional map)
        speaks for a class: `[N, 28, 28, 1]`, or `[N, H, W]` for Grad-CAM.

        Args:
            images: as `predict_proba` takes them.
            method: "gradients" (saliency), "integrated_gradients" (from `baseline`, by the
                trapezoid rule over `steps`; they sum to the logit's difference between image and
                baseline) or "grad_cam" (conv models).
            targets: the class per image; default the predicted one.
            baseline: a uint8 image for integrated gradients; default black.
            steps: integrated gradients' steps along the path.

        Raises:
            UserError: an unknown method, or Grad-CAM on a model without convolutions.
        """
        if method not in interpret.METHODS:
            raise UserError(
                f"Unknown attribution method {method!r}; choose one of {', '.join(interpret.METHODS)}."
            )
        x = as_batch(images)
        targets = self.predict(x) if targets is None else np.asarray(targets, np.int32)
        model, normalizer = self._model, self._normalizer
        if method == "integrated_gradients":
            return self._integrated_gradients(x, targets, baseline, steps)
        if method == "gradients":
            fn = functools.partial(interpret.gradients, model)
        else:
            map_name = self.conv_map_name
            if map_name is None:
                raise UserError(
                    f"Grad-CAM weighs a convolutional feature map, and this {self.config.model.name} has "
                    "none: use method='integrated_gradients' or 'gradients'."
                )
            fn = functools.partial(interpret.grad_cam, model, map_name=map_name)
        program = self._program((method,), lambda w, x, t: fn(w, normalizer, x, t))
        return self._batched(program, x, targets)

    def _integrated_gradients(
        self, x: np.ndarray, targets: np.ndarray, baseline: np.ndarray | None, steps: int
    ) -> np.ndarray:
        """Integrated gradients over the path's points a chunk at a time: each compiled call is
        short, so Ctrl-C or SIGTERM stops a long path within seconds."""
        if not (isinstance(steps, numbers.Integral) and 1 <= steps <= interpret.MAX_STEPS):
            raise UserError(
                f"Integrated gradients' steps must be an integer from 1 to {interpret.MAX_STEPS} "
                f"(64 is usually enough), got {steps!r}."
            )
        base = np.zeros(IMAGE_SHAPE, np.uint8) if baseline is None else as_batch(baseline)[0]
        count = min(steps + 1, _PATH_CHUNK)
        path = functools.partial(
            interpret.path_gradients, self._model, baseline=base, steps=steps, count=count
        )
        program = self._program(
            ("integrated_gradients", steps, base.tobytes()),
            lambda w, x, t, first: path(w, self._normalizer, x, t, first=first),
        )
        total = sum(
            self._batched(program, x, targets, scalars=(first,))
            for first in range(0, steps + 1, count)
        )
        pixels = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
        return (pixels - base.astype(np.float32) / 255.0) * total

    @functools.cached_property
    def conv_map_name(self) -> str | None:
        """The last convolutional map Grad-CAM weighs (None for an MLP), traced once."""
        return interpret.conv_map_name(self._model, self._weights, self._normalizer)

    @functools.cached_property
    def _programs(self) -> dict[tuple, Any]:
        return {}

    def _program(self, key: tuple, fn: Any) -> Any:
        """`jax.jit(fn)`, made once per `key`: later calls reuse its compiled programs."""
        if key not in self._programs:
            self._programs[key] = jax.jit(fn)
        return self._programs[key]

    def first_layer_weights(self) -> np.ndarray:
        """The kernel of the layer that reads the image: `[784, units]` for an MLP, `[kh, kw, 1,
        channels]` for a conv model."""
        return np.asarray(interpret.first_layer_kernel(self._model, self._weights))

    def _batched(
        self, program, images: np.ndarray, *per_image: np.ndarray, scalars: tuple = ()
    ) -> Any:
        """`program(weights, batch, *per_image batches, *scalars)` over fixed-size batches of the
        images (one compile for any number), its outputs concatenated on the host."""
        x = as_batch(images)
        x = x if x.dtype == np.uint8 else (x * 255.0).astype(np.float32)  # the pixel scale
        weights = jax.device_put(self._weights)
        outputs = []
        for start in range(0, len(x), _BATCH):
            pad = _BATCH - len(x[start : start + _BATCH])
            args = [
                np.concatenate([a[start : start + _BATCH], np.zeros((pad, *a.shape[1:]), a.dtype)])
                for a in (x, *per_image)
            ]
            outputs.append(
                jax.tree.map(
                    lambda a, n=_BATCH - pad: np.asarray(a)[:n], program(weights, *args, *scalars)
                )
            )
        return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def report(probabilities: np.ndarray, labels: np.ndarray, class_names) -> dict[str, Any]:
    """The loss and every metric of `metrics.METRICS` (accuracy, ...), per-class accuracy, the
    confusion matrix (rows true, columns predicted), the predictions."""
    predicted = probabilities.argmax(-1)
    log_probabilities = np.log(np.maximum(probabilities, 1e-12))
    num_classes = len(class_names)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        **{
            name: float(np.mean(np.asarray(metric.per_example(log_probabilities, labels), float)))
            for name, metric in metrics.METRICS.items()
        },
        "loss": float(-log_probabilities[np.arange(len(labels)), labels].mean()),
        "per_class_accuracy": {
            name: float(a) for name, a in zip(class_names, per_class, strict=False)
        },
        "confusion_matrix": confusion.tolist(),
        "predictions": predicted.tolist(),
    }


def one_run(model: dict, run: int) -> dict:
    """Run `run`'s weights of a model item whose weights carry the run axis (the normalizer is
    shared)."""
    return {
        **model,
        **{
            key: engine.select_run(model[key], run)
            for key in ("params", "ema_params", "batch_stats")
            if key in model
        },
    }


def as_batch(images: np.ndarray) -> np.ndarray:
    """Brings HW, HWC, NHW or NHWC images, or rows of 784 pixels (a CSV's, an MLP tutorial's), to
    NHWC [N, 28, 28, 1]: uint8 as it is, other integers in 0-255 as uint8, floats in [0, 1] as
    float32. Floats in 0-255 (a missing `/ 255`) and integers read as floats would otherwise be
    predicted silently and wrongly, so they are refused."""
    x = np.asarray(images)
    if x.ndim in (1, 2) and x.shape[-1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        x = x.reshape(-1, *IMAGE_SHAPE[:2])
    if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 1 and x.shape[:2] == IMAGE_SHAPE[:2]):
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[1:] != IMAGE_SHAPE:
        raise UserError(
            "Expected 28x28 grayscale images (HW, HWC, NHW, NHWC, or rows of 784 pixels), got "
            f"shape {np.shape(images)}. An image file or a photo of another size or in color: "
            "pass fmnist_jax.inference.images.read(path), or images.to_fashion_mnist(pil_image), which "
            "convert it as the predict command does."
        )
    if x.dtype == np.uint8 or x.size == 0:
        return x
    if np.issubdtype(x.dtype, np.integer):
        low, high = x.min(), x.max()
        if low < 0 or high > 255:
            raise UserError(f"Integer images must hold pixel values in 0-255, got {low} to {high}.")
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(
            f"Images must be uint8 pixels (0-255) or floats in [0, 1], got dtype {x.dtype}."
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(
            "The images hold NaN or infinite values: pass uint8 pixels or floats in [0, 1]."
        )
    low, high = x.min(), x.max()
    if low < 0 or high > 1:
        raise UserError(
            f"Float images must be scaled to [0, 1], got {low:g} to {high:g}"
            + (": divide them by 255, or pass them as uint8." if high <= 255 else ".")
        )
    return x


def load(workdir: str, which: str = "final", run: int | None = None) -> Classifier:
    """Restores a trained run's model for inference, on whatever backend is present.

    Args:
        workdir: the run's directory.
        which: 'final' (the weights summary.json reports), 'best' (best validation accuracy) or
            'latest' (the newest epoch's).
        run: which run of the run axis (seeds; a sweep's members x seeds, see sweep.json); None =
            the reported one: the first seed, or a sweep's best member on validation.

    Returns:
        A `Classifier` with that run's weights, its config (a sweep member's values set) and the
        class names.

    Raises:
        UserError: no such workdir, checkpoint or run, or every checkpoint of that kind is damaged.
    """
    if which not in checkpoint.KINDS:
        raise UserError(
            f"Unknown checkpoint {which!r}; choose one of {', '.join(checkpoint.KINDS)}."
        )
    if not os.path.isdir(workdir):
        raise UserError(f"Workdir {workdir} does not exist. Pass the --workdir of a trained run.")
    if workdir_lib.holds_search(workdir):
        raise UserError(workdir_lib.search_best(workdir))
    model, meta = checkpoint.restore_model(workdir, which)
    config = ml_collections.ConfigDict(meta["config"])
    config.grid = run_axis.from_json(config.get("grid", ()))
    if run is None:
        run = meta.get("summary", {}).get("reported_run", 0)
    runs = run_axis.RunAxis.of(config).num_runs
    if not 0 <= run < runs:
        raise UserError(
            f"{workdir} holds runs 0 to {runs - 1} (members x seeds); run={run} is not one of them."
        )
    return Classifier.of_run(config, meta["class_names"], int(meta["epoch"]), model, run)
