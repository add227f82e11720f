"""A training run's reports: TensorBoard per epoch, then its figures and last TensorBoard entries.

The loop hands each epoch's row to `RunReports.epoch` and the finished run's numbers to `finish`;
nothing here computes results. tensorboardX is imported in a thread while the programs compile,
and epochs that end before it is ready are written once it is, so the loop never waits for it.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import config as config_lib
from fmnist_jax import inference
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.records.metrics import EpochRow, Summary
from fmnist_jax.reports import figure_workers, lines

if TYPE_CHECKING:
    from fmnist_jax.data import Splits
    from fmnist_jax.reports.board import Board


class RunReports:
    """The run's TensorBoard writer (opened once tensorboardX is imported) and its figures."""

    def __init__(
        self, workdir: str, primary: bool, imported: concurrent.futures.Future | None = None
    ):
        """`imported`: the import of `reports.board` under way; by default this starts it."""
        self._workdir, self._primary = workdir, primary
        if imported is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="import-board")
            imported = pool.submit(importlib.import_module, "fmnist_jax.reports.board")
            pool.shutdown(wait=False)
        self._imported = imported
        self._board: Board | None = None
        self._pending: list[EpochRow] = []

    def epoch(self, row: EpochRow) -> None:
        """Writes the epoch's scalars, now if tensorboardX is imported, else once it is."""
        self._pending.append(row)
        if self._imported.done():
            self.board()

    def board(self) -> Board:
        """The writer, with every epoch so far written (waits for the import if it must)."""
        if self._board is None:
            self._board = self._imported.result().Board(self._workdir, self._primary)
        for row in self._pending:
            self._board.epoch(row)
        self._pending.clear()
        return self._board

    def finish(
        self,
        config: ConfigDict,
        summary: Summary,
        history: list[EpochRow],
        probabilities: np.ndarray,
        splits: Splits,
    ) -> None:
        """The run's figures in <workdir>/plots/, unless `config.plots` is off, and its last
        TensorBoard entries: the test metrics, the config as hparams, sample predictions."""
        images = (
            _draw_figures(self._workdir, history, probabilities, splits) if config.plots else {}
        )
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v)
            for k, v in config_lib.flatten(workdir_lib.config_as_json(config)).items()
        }
        self.board().finish(hparams, summary, images)


def _draw_figures(
    workdir: str, history: list[dict[str, Any]], probabilities: np.ndarray, splits: Splits
) -> dict[str, np.ndarray]:
    """<workdir>/plots/ from the reported weights' test probabilities, the slowest figure first
    (the workers end together); returns TensorBoard's images by tag."""
    report = inference.report(probabilities, splits.test_labels, splits.class_names)
    names, images, labels = splits.class_names, splits.test_images, splits.test_labels
    first = np.arange(10)
    figures = [  # `plots` functions, which name the PNGs
        (
            "confusion_matrix",
            {"matrix": np.array(report["confusion_matrix"]), "class_names": names},
        ),
        (
            "confident_mistakes",
            {
                "images": images,
                "labels": labels,
                "probabilities": probabilities,
                "class_names": names,
            },
        ),
        ("learning_curves", {"history": history}),
        ("per_class_accuracy", {"accuracies": report["per_class_accuracy"]}),
        (
            "training_images",
            {
                "images": splits.train_images[:25],
                "labels": splits.train_labels[:25],
                "class_names": names,
            },
        ),
    ]
    plots_dir = os.path.join(workdir, lines.PLOTS_DIR)
    tasks: list[figure_workers.Task] = [
        (name, kwargs, os.path.join(plots_dir, f"{name}.png")) for name, kwargs in figures
    ]
    samples = {
        "images": images[first],
        "labels": labels[first],
        "probabilities": probabilities[first],
        "class_names": names,
        "indices": first,
    }
    *_, sample_pixels = figure_workers.draw([*tasks, ("prediction_grid", samples, None)])
    return {"test/sample_predictions": sample_pixels}
