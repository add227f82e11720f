"""Re-evaluate a checkpoint on the test split, without training.

    python -m fmnist_jax.evaluate --workdir=DIR [--which=final|best|latest]

Prints accuracy, loss and per-class accuracy; writes `<workdir>/eval/<which>/metrics.json` (with
the confusion matrix and every test prediction) and `confusion_matrix.png`.
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags, logging

from fmnist_jax import cli, data
from fmnist_jax.errors import writing
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports import figure_workers

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run.", required=True)
_WHICH = flags.DEFINE_enum(
    "which", "final", ["final", "best", "latest"], "Which checkpoint to evaluate."
)


def _evaluate_checkpoint() -> None:
    """Evaluates --which checkpoint of --workdir on the test split and writes the report next to it."""
    figure_workers.start()  # they import matplotlib while this process imports JAX
    from fmnist_jax import inference

    classifier = inference.load(_WORKDIR.value, _WHICH.value)
    splits = data.load(classifier.config.data)
    probabilities = classifier.predict_proba(splits.test_images)
    result = inference.report(probabilities, splits.test_labels, classifier.class_names)
    result["epoch"] = classifier.epoch
    out = os.path.join(_WORKDIR.value, "eval", _WHICH.value)
    with writing(out):
        os.makedirs(out, exist_ok=True)
    workdir_lib.write_json(os.path.join(out, "metrics.json"), result)
    matrix = {"matrix": np.array(result["confusion_matrix"]), "class_names": classifier.class_names}
    figure_workers.draw([("confusion_matrix", matrix, os.path.join(out, "confusion_matrix.png"))])
    lines = [f"{name:<12} {acc:.4f}" for name, acc in result["per_class_accuracy"].items()]
    logging.info(
        "Checkpoint %r (epoch %d): test accuracy %.4f, loss %.4f\nPer-class accuracy:\n%s\nWritten to %s",
        _WHICH.value,
        result["epoch"],
        result["accuracy"],
        result["loss"],
        "\n".join(lines),
        out,
    )


if __name__ == "__main__":
    cli.main(_evaluate_checkpoint, clean_stops=False)
