"""Figures: predictions with their probability bars (like the TF tutorial), confusion matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def predictions(path: str, images: np.ndarray, probabilities: np.ndarray, class_names, titles, true_labels=None) -> None:
    """One row per image: the image with predicted class, confidence and true class (green right,
    red wrong, black unknown), and a bar chart of the 10 class probabilities."""
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(8, 2.2 * n), squeeze=False)
    for i in range(n):
        predicted = int(probabilities[i].argmax())
        truth = None if true_labels is None or true_labels[i] is None else int(true_labels[i])
        color = "black" if truth is None else ("green" if truth == predicted else "red")
        ax = axes[i, 0]
        ax.imshow(images[i][..., 0], cmap=plt.cm.binary)
        ax.set_xticks([]), ax.set_yticks([])
        truth_text = "" if truth is None else f" (true: {class_names[truth]})"
        ax.set_xlabel(f"{class_names[predicted]} {100 * probabilities[i, predicted]:.0f}%{truth_text}", color=color)
        ax.set_title(titles[i], fontsize=8)
        ax = axes[i, 1]
        bars = ax.bar(range(len(class_names)), probabilities[i], color="#777777")
        ax.set_ylim(0, 1)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
        bars[predicted].set_color("tab:blue" if truth is None else "red")
        if truth is not None:
            bars[truth].set_color("green")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def confusion_matrix(path: str, matrix: np.ndarray, class_names) -> None:
    """Counts with true classes as rows and predicted classes as columns."""
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right"), ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for (r, c), count in np.ndenumerate(matrix):
        ax.text(c, r, str(count), ha="center", va="center", fontsize=7, color="white" if count > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
