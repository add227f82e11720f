"""Figures: predictions with their probability bars (like the TF tutorial), confusion matrix, and the
per-run plots that training writes to `<workdir>/plots/`.

Each function returns a matplotlib `Figure` (shown inline in a notebook); `save(fig, path)` writes
and closes it, which is what the command-line programs do.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import matplotlib

from fmnist_jax.reports import in_notebook, shown

if not in_notebook():  # a notebook keeps its inline backend to show the figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def predictions(
    images: np.ndarray, probabilities: np.ndarray, class_names, titles, true_labels=None
) -> Figure:
    """One row per image: the image with predicted class, confidence and true class (green right,
    red wrong, black unknown), and a bar chart of the 10 class probabilities."""
    n = len(images)
    height = 2.2 * n  # inches: each row 1.35 for the axes, 0.85 below it for labels and title
    fig, axes = plt.subplots(n, 2, figsize=(8, height), squeeze=False)
    fig.subplots_adjust(  # a fixed layout: `tight` would dominate the drawing
        left=0.04, right=0.98, top=1 - 0.2 / height, bottom=0.65 / height, hspace=0.85 / 1.35
    )
    for i in range(n):
        predicted = int(probabilities[i].argmax())
        truth = None if true_labels is None or true_labels[i] is None else int(true_labels[i])
        color = "black" if truth is None else ("green" if truth == predicted else "red")
        ax = axes[i, 0]
        ax.imshow(images[i][..., 0], cmap=plt.cm.binary)
        ax.set_xticks([]), ax.set_yticks([])
        truth_text = "" if truth is None else f" (true: {class_names[truth]})"
        ax.set_xlabel(
            f"{class_names[predicted]} {100 * probabilities[i, predicted]:.0f}%{truth_text}",
            color=color,
        )
        ax.set_title(titles[i], fontsize=8)
        ax = axes[i, 1]
        bars = ax.bar(range(len(class_names)), probabilities[i], color="#777777")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
        bars[predicted].set_color("tab:blue" if truth is None else "red")
        if truth is not None:
            bars[truth].set_color("green")
    return fig


def confusion_matrix(matrix: np.ndarray, class_names) -> Figure:
    """Counts with true classes as rows and predicted classes as columns."""
    fig, ax = plt.subplots(figsize=(8, 7))
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.16, top=0.98)  # room for the class names
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right"), ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for (r, c), count in np.ndenumerate(matrix):
        ax.text(
            c,
            r,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > matrix.max() / 2 else "black",
        )
    return fig


def save(fig: Figure, path: str) -> None:
    """Writes `fig` to `path` as its extension says (`reports.FIGURE_FORMATS`) and closes it. The figure goes to a
    temporary file beside `path`, renamed over it once whole: a write that fails (a full disk)
    leaves an earlier file as it was. Every figure brings its layout: the run's figures a fixed
    one (`tight_layout` would cost a third of each save), the others `layout="tight"`. PNG's
    fastest compression: faster saves for somewhat larger files."""
    try:
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", exist_ok=True)
        kind = os.path.splitext(name)[1][1:].lower()
        options = {"pil_kwargs": {"compress_level": 1}} if kind == "png" else {}
        partial = os.path.join(folder, f".{name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as f:
                fig.savefig(f, format=kind, dpi=80, **options)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
    finally:
        plt.close(fig)


def learning_curves(history: list[dict[str, Any]]) -> Figure:
    """The loss and each metric per epoch, train vs validation (the Keras-notebook plot): every
    `train_<metric>` mean the rows hold."""
    shown_metrics = sorted(  # the loss first, as Keras draws it
        (
            key.removeprefix("train_")
            for key in history[0]
            if key.startswith("train_") and not key.endswith(("_std", "_seeds"))
        ),
        key=lambda metric: metric != "loss",
    )
    fig, axes = plt.subplots(1, len(shown_metrics), figsize=(5 * len(shown_metrics), 4))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.97, wspace=0.22)
    epochs = [r["epoch"] for r in history]
    for ax, metric in zip(axes, shown_metrics, strict=True):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        if all(f"val_{metric}" in r for r in history):
            ax.plot(epochs, [r[f"val_{metric}"] for r in history], "o-", label="validation")
        ax.set_xlabel("epoch"), ax.set_ylabel(metric), ax.legend(), ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return fig


def comparison(
    histories: dict[str, list[dict[str, Any]]], summaries: dict[str, dict[str, Any]]
) -> Figure:
    """Variants side by side: validation accuracy per epoch (mean over seeds, +-1 std band; train
    dashed) and test accuracy (mean +- std over seeds)."""
    fig, (curves, bars) = plt.subplots(
        1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]}, layout="tight"
    )
    for i, (label, history) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = np.array([r["epoch"] for r in history])
        curves.plot(epochs, [r["train_accuracy"] for r in history], "--", color=color, alpha=0.6)
        if all("val_accuracy" in r for r in history):
            mean = np.array([r["val_accuracy"] for r in history])
            std = np.array([r.get("val_accuracy_std", 0.0) for r in history])
            curves.plot(epochs, mean, "o-", color=color, label=label, markersize=3)
            curves.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
    (
        curves.set_xlabel("epoch"),
        curves.set_ylabel("accuracy (validation solid, train dashed)"),
        curves.grid(alpha=0.3),
    )
    curves.legend(fontsize=8)
    labels = list(summaries)
    means = [summaries[k]["test_accuracy"] for k in labels]
    stds = [summaries[k].get("test_accuracy_std", 0.0) for k in labels]
    bars.barh(
        range(len(labels)), means, xerr=stds, color=[f"C{i}" for i in range(len(labels))], capsize=3
    )
    bars.set_yticks(range(len(labels)), labels, fontsize=8), bars.invert_yaxis()
    low, high = (
        min(m - s for m, s in zip(means, stds, strict=False)),
        max(m + s for m, s in zip(means, stds, strict=False)),
    )
    bars.set_xlim(max(0.0, low - 0.01), high + 0.3 * (high - low) + 0.01)
    bars.set_xlabel("test accuracy (mean +- std over seeds)"), bars.grid(alpha=0.3, axis="x")
    for i, (m, s) in enumerate(zip(means, stds, strict=False)):
        bars.text(m + s + 0.002, i, f"{m:.4f}", va="center", fontsize=8)
    return fig


def sweep(result: dict[str, Any]) -> Figure:
    """A sweep at a glance (`fmnist_jax.tuning.sweep.results`): per swept key, final validation (solid) and
    test (dashed) accuracy against its values (mean +- std over seeds; one line per setting of the
    other keys), then every member's validation curve."""
    keys = list(result["grid"])
    members = [m for m in result["members"] if not m["diverged"]]
    fig, axes = plt.subplots(
        1, len(keys) + 1, figsize=(4.5 * (len(keys) + 1), 4), squeeze=False, layout="tight"
    )
    for ax, key in zip(axes[0], keys, strict=False):
        others = [k for k in keys if k != key]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for m in members:
            groups.setdefault(tuple(m["hparams"][k] for k in others), []).append(m)
        for i, (setting, group) in enumerate(groups.items()):
            group = sorted(group, key=lambda m: m["hparams"][key])
            x = [m["hparams"][key] for m in group]
            label = " ".join(
                f"{k.rpartition('.')[2]}={v:g}" for k, v in zip(others, setting, strict=True)
            )
            for metric, style in (("val_accuracy", "o-"), ("test_accuracy", "x--")):
                ax.errorbar(
                    x,
                    [m[metric] for m in group],
                    yerr=[m[f"{metric}_std"] for m in group],
                    fmt=style,
                    color=f"C{i}",
                    capsize=3,
                    label=label if metric == "val_accuracy" and label else None,
                )
        values = [v for v in result["grid"][key] if v > 0]
        if len(values) == len(result["grid"][key]) and max(values) >= 10 * min(values):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(result["grid"][key], [f"{v:g}" for v in result["grid"][key]])
        ax.set_xlabel(key), ax.set_ylabel("accuracy (validation solid, test dashed)")
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
    curves = axes[0, -1]
    epochs = result["epochs"]
    many = len(result["members"]) > 12  # then only the best member is named
    for i, m in enumerate(result["members"]):
        best = i == result["best"]
        label = m["name"] if best or not many else None
        curves.plot(epochs, m["curves"]["val_accuracy"], "-" if best else ":", label=label)
    curves.set_xlabel("epoch"), curves.set_ylabel("validation accuracy (best solid)")
    curves.grid(alpha=0.3)
    curves.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    curves.legend(fontsize=6)
    return fig


def search(result: dict[str, Any]) -> Figure:
    """A search at a glance (`fmnist_jax.tuning.search.run`): the objective against each searched key,
    every trial's validation curve with its stop marked (x: pruned or early-stopped), and the best
    objective so far against the search's wall time."""
    objective = result["objective"]
    trials = [t for t in result["trials"] if t["objective"] is not None]
    keys = [key for key, _ in result["space"]]
    fig, axes = plt.subplots(
        1, len(keys) + 2, figsize=(4.2 * (len(keys) + 2), 4), squeeze=False, layout="tight"
    )
    for ax, (key, spec) in zip(axes[0], result["space"], strict=False):
        values = [shown(t["hparams"][key]) for t in trials]
        ax.scatter(values, [t["objective"] for t in trials], s=14)
        if spec[0] == "log_uniform" or (
            spec[0] == "choice"
            and all(isinstance(v, (int, float)) for v in spec[1])  # not widths
            and min(spec[1]) > 0
            and max(spec[1]) >= 10 * min(spec[1])
        ):
            ax.set_xscale("log")
        ax.set_xlabel(key), ax.set_ylabel(objective), ax.grid(alpha=0.3)
    curves, progress = axes[0, -2], axes[0, -1]
    for t in trials:
        best = t["index"] == result["best"]
        epochs = range(1, len(t[objective]) + 1)
        curves.plot(epochs, t[objective], "-" if best else ":", lw=2 if best else 0.8)
        if not t["stopped"].startswith("finished"):
            curves.plot(len(t[objective]), t[objective][-1], "kx", ms=4)
    (
        curves.set_xlabel("epoch"),
        curves.set_ylabel(f"{objective} (best solid)"),
        curves.grid(alpha=0.3),
    )
    if "pareto" in result:
        _trade_off(progress, trials, result["pareto"], objective)
    else:
        _progress(progress, trials, objective)
    return fig


def _progress(ax: Axes, trials: list[dict[str, Any]], objective: str) -> None:
    """The best objective so far against the search's seconds."""
    pick = max if objective == "val_accuracy" else min
    done = sorted(trials, key=lambda t: t["seconds"])
    so_far = [pick(t["objective"] for t in done[: i + 1]) for i in range(len(done))]
    ax.step([t["seconds"] for t in done], so_far, where="post")
    (
        ax.set_xlabel("search seconds (training and compiling)"),
        ax.set_ylabel(f"best {objective} so far"),
    )
    ax.grid(alpha=0.3)


def _trade_off(ax: Axes, trials: list[dict[str, Any]], pareto: list[int], objective: str) -> None:
    """A search of two objectives: each trial's objective against its parameters, the front joined."""
    front = sorted((t for t in trials if t["index"] in pareto), key=lambda t: t["params"])
    ax.scatter([t["params"] for t in trials], [t["objective"] for t in trials], s=14)
    ax.plot([t["params"] for t in front], [t["objective"] for t in front], "r.-")
    ax.set_xscale("log")
    ax.set_xlabel("parameters"), ax.set_ylabel(f"{objective} (the Pareto front in red)")
    ax.grid(alpha=0.3)


def curves_to_target(
    epochs: list[int], curves: dict[str, list[float]], target: float, ylabel: str
) -> Figure:
    """One curve per seed against a horizontal target line, each marked where it first reaches it."""
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="tight")
    for i, (label, values) in enumerate(curves.items()):
        ax.plot(epochs, values, "-", color=f"C{i}", label=label)
        reached = next((e for e, v in zip(epochs, values, strict=False) if v >= target), None)
        if reached is not None:
            ax.plot([reached], [values[epochs.index(reached)]], "o", color=f"C{i}")
            ax.annotate(
                f"epoch {reached}",
                (reached, target),
                textcoords="offset points",
                xytext=(0, -14 - 10 * i),
                fontsize=8,
                color=f"C{i}",
            )
    ax.axhline(target, color="gray", linestyle=":", label=f"target {target}")
    ax.set_xlabel("epoch"), ax.set_ylabel(ylabel), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    return fig


def per_class_accuracy(accuracies: dict[str, float]) -> Figure:
    """One bar per class: its test accuracy (where the model confuses classes, e.g. shirts)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.22, top=0.97)  # room for the class names
    ax.bar(range(len(accuracies)), list(accuracies.values()), color="tab:blue")
    ax.set_xticks(range(len(accuracies)), list(accuracies), rotation=45, ha="right")
    ax.set_ylim(0, 1), ax.set_ylabel("test accuracy")
    for i, a in enumerate(accuracies.values()):
        ax.text(i, a + 0.01, f"{a:.2f}", ha="center", fontsize=8)
    return fig


def image_grid(
    images: np.ndarray, captions: list[str], colors: list[str] | None = None, columns: int = 5
) -> Figure:
    """Images in a grid with a caption under each (training samples, mistakes).

    One montage in one axes, not an axes per image: a quarter of the drawing time.
    """
    rows = int(np.ceil(len(images) / columns))
    cell_w, cell_h = 40, 44  # pixels per image cell: the image at the top, the caption below
    montage = np.zeros((rows * cell_h, columns * cell_w), np.uint8)
    fig = plt.figure(figsize=(2 * columns, 2.2 * rows))
    ax = fig.add_axes((0, 0, 1, 1))
    for i, image in enumerate(images):
        top, left = (i // columns) * cell_h + 2, (i % columns) * cell_w + 6
        montage[top : top + 28, left : left + 28] = image[..., 0]
        ax.text(
            left + 14,
            top + 29,
            captions[i],
            ha="center",
            va="top",
            fontsize=8,
            color=(colors or ["black"] * len(images))[i],
        )
    ax.imshow(montage, cmap="binary", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    return fig


def training_images(images: np.ndarray, labels: np.ndarray, class_names, count: int = 25) -> Figure:
    """The first `count` training images with their classes: what the model learns from."""
    return image_grid(images[:count], [class_names[y] for y in labels[:count]])


def prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names,
    indices: np.ndarray,
) -> Figure:
    """Images `indices` captioned with prediction, confidence and true class (green right, red wrong)."""
    predicted = probabilities.argmax(-1)
    captions = [
        f"{class_names[predicted[i]]} {100 * probabilities[i, predicted[i]]:.0f}%\n(true: {class_names[labels[i]]})"
        for i in indices
    ]
    return image_grid(
        images[indices],
        captions,
        ["green" if predicted[i] == labels[i] else "red" for i in indices],
    )


def confident_mistakes(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names, count: int = 25
) -> Figure:
    """The `count` wrong predictions made with the highest probability."""
    predicted = probabilities.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]])][:count]
    return prediction_grid(images, labels, probabilities, class_names, worst)
