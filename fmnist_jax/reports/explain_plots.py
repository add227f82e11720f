"""The figures of what a network sees (`python -m fmnist_jax.explain`): per image its input,
attributions, top classes and activations; the first layer's weights; the test set's embedding."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from fmnist_jax.reports.plots import plt  # with its backend chosen (files, or a notebook's inline)


def _grid(maps: np.ndarray, columns: int) -> np.ndarray:
    """[K, H, W] maps tiled into one image, `columns` wide, each scaled to [0, 1] on its own."""
    k, h, w = maps.shape
    rows = math.ceil(k / columns)
    tiled = np.full((rows * (h + 1), columns * (w + 1)), np.nan)
    for i, m in enumerate(maps):
        span = m.max() - m.min()
        r, c = divmod(i, columns)
        tiled[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = (
            (m - m.min()) / span if span > 0 else 0.0
        )
    return tiled


def activation_maps(layer: np.ndarray) -> np.ndarray:
    """One image's layer output as maps to draw: a dense layer's units as a square-ish grid of
    pixels, a conv layer's first 16 channels."""
    if layer.ndim == 3:  # [H, W, C]
        return _grid(np.moveaxis(layer[..., :16], -1, 0), 8)
    side = math.ceil(math.sqrt(layer.size))
    return np.pad(layer, (0, side * side - layer.size), constant_values=np.nan).reshape(side, side)


def explanations(
    images: np.ndarray,
    titles: list[str],
    probabilities: np.ndarray,
    class_names: tuple[str, ...],
    attributions: dict[str, np.ndarray],
    activations: dict[str, np.ndarray],
) -> Figure:
    """One row per image: the input, each attribution map over it (`attributions`: column title
    -> [N, H, W] maps, upsampled to the image), the top 3 classes, then each layer's activations."""
    n, columns = len(images), 2 + len(attributions) + len(activations)
    fig, axes = plt.subplots(
        n, columns, figsize=(2.3 * columns, 2.4 * n), squeeze=False, layout="constrained"
    )
    for i in range(n):
        row = axes[i]
        row[0].imshow(images[i, ..., 0], cmap="gray"), row[0].set_title(titles[i], fontsize=8)
        for ax, (name, maps) in zip(row[1:], attributions.items(), strict=False):
            heat = (
                np.kron(maps[i], np.ones((28 // maps.shape[1],) * 2))
                if maps.shape[1] < 28
                else maps[i]
            )
            ax.imshow(images[i, ..., 0], cmap="gray")
            ax.imshow(np.abs(heat), cmap="inferno", alpha=0.6)
            ax.set_title(name, fontsize=8)
        bars = row[1 + len(attributions)]
        top = np.argsort(-probabilities[i])[:3][::-1]
        bars.barh([class_names[k] for k in top], probabilities[i][top], color="C0")
        bars.set_xlim(0, 1), bars.tick_params(labelsize=7), bars.set_title("top 3", fontsize=8)
        for ax, (name, layer) in zip(
            row[2 + len(attributions) :], activations.items(), strict=False
        ):
            ax.imshow(activation_maps(layer[i]), cmap="viridis"), ax.set_title(name, fontsize=8)
        for ax in row:
            if ax is not bars:
                ax.set_xticks([]), ax.set_yticks([])
    return fig


def first_layer(kernel: np.ndarray) -> Figure:
    """The first layer's weights: an MLP's units as 28x28 templates, a CNN's filters (first 64)."""
    if kernel.ndim == 2:  # [784, units]
        maps = kernel.T.reshape(-1, 28, 28)[:64]
        title = "first-layer weights as 28x28 templates (blue negative, red positive)"
    else:  # [kh, kw, 1, channels]
        maps = np.moveaxis(kernel[:, :, 0, :64], -1, 0)
        title = "first-layer filters (blue negative, red positive)"
    columns = 8
    rows = math.ceil(len(maps) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(1.4 * columns, 1.4 * rows + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, m in zip(axes.flat, maps, strict=False):
        bound = np.abs(m).max() or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-bound, vmax=bound)
    fig.suptitle(title, fontsize=9)
    return fig


def embedding(
    points: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], how: str
) -> Figure:
    """A 2-D map of embeddings coloured by class."""
    fig, ax = plt.subplots(figsize=(8, 7), layout="constrained")
    for k, name in enumerate(class_names):
        chosen = labels == k
        ax.scatter(points[chosen, 0], points[chosen, 1], s=2, color=f"C{k}", label=name)
    ax.legend(markerscale=5, fontsize=8), ax.set_title(f"test set's penultimate features ({how})")
    ax.set_xticks([]), ax.set_yticks([])
    return fig
