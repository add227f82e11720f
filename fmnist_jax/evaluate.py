"""Re-evaluate a checkpoint on the test split, without training.

    python -m fmnist_jax.evaluate --workdir=DIR [--which=final|best|latest]

Prints accuracy, loss and per-class accuracy; writes `<workdir>/eval/<which>/metrics.json` (with
the confusion matrix and every test prediction) and `confusion_matrix.png`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import app, flags, logging

from fmnist_jax import cli, data, inference, plots, workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run.", required=True)
_WHICH = flags.DEFINE_enum("which", "final", ["final", "best", "latest"], "Which checkpoint to evaluate.")


def evaluate(classifier: inference.Classifier, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy, confusion matrix (rows true, columns predicted), predictions."""
    probabilities = classifier.predict_proba(images)
    predicted = probabilities.argmax(-1)
    num_classes = len(classifier.class_names)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    return {
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12)).mean()),
        "per_class_accuracy": {name: float(a) for name, a in zip(classifier.class_names, per_class)},
        "confusion_matrix": confusion.tolist(),
        "predictions": predicted.tolist(),
        "epoch": classifier.epoch,
    }


def main(argv: list[str]) -> None:
    del argv

    def run():
        classifier = inference.load(_WORKDIR.value, _WHICH.value)
        splits = data.load(classifier.config.data)
        result = evaluate(classifier, splits.test_images, splits.test_labels)
        out = os.path.join(_WORKDIR.value, "eval", _WHICH.value)
        os.makedirs(out, exist_ok=True)
        workdir_lib.write_json(os.path.join(out, "metrics.json"), result)
        plots.confusion_matrix(os.path.join(out, "confusion_matrix.png"), np.array(result["confusion_matrix"]), classifier.class_names)
        lines = [f"{name:<12} {acc:.4f}" for name, acc in result["per_class_accuracy"].items()]
        logging.info(
            "Checkpoint %r (epoch %d): test accuracy %.4f, loss %.4f\nPer-class accuracy:\n%s\nWritten to %s",
            _WHICH.value, result["epoch"], result["accuracy"], result["loss"], "\n".join(lines), out,
        )

    cli.run(run)


if __name__ == "__main__":
    app.run(main)
