"""Classify images with a trained model and draw them with their class probabilities.

    python -m fmnist_jax.predict --workdir=DIR --images a.png b.jpg
    python -m fmnist_jax.predict --workdir=DIR --images photos/     # every image file in it
    python -m fmnist_jax.predict --workdir=DIR --test_indices=0,17,42
    python -m fmnist_jax.predict --workdir=DIR --random=6 --output=predictions.png

Every prediction is printed; the figure draws the first 20 images. A file that cannot be read, or
that is larger than --max_pixels, is reported by name and not decoded; the other images are still
predicted (exit 1).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from absl import app, flags

from fmnist_jax import cli, data
from fmnist_jax.errors import UserError, writing
from fmnist_jax.inference import images
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports import figure_workers

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run.", required=True)
_WHICH = flags.DEFINE_enum(
    "which", "final", ["final", "best", "latest"], "Which checkpoint to use."
)
_IMAGES = flags.DEFINE_list(
    "images",
    [],
    "Image files (PNG, JPEG, ...), directories of them, or quoted wildcard patterns "
    "('photos/*.jpg'); more may follow as plain arguments.",
)
_TEST_INDICES = flags.DEFINE_list("test_indices", [], "Indices into the test split, e.g. 0,17,42.")
_RANDOM = flags.DEFINE_integer("random", 0, "Predict this many random test images.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for --random.")
_OUTPUT = flags.DEFINE_string("output", None, "Figure path (default: <workdir>/predictions.png).")
_TOP = flags.DEFINE_integer("top", 3, "Classes printed per image.")
_MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels",
    images.MAX_PIXELS,
    "Larger images are reported and skipped, not decoded (JPEGs decode at a reduced scale first).",
)


# The figure draws one row per image: hundreds of rows take minutes to draw into a PNG taller than
# a viewer shows. Every prediction is printed either way.
_FIGURE_ROWS = 20


def main(argv: list[str]) -> None:
    paths, problems = images.files(list(_IMAGES.value) + argv[1:])
    failures = list(problems)  # with each file that cannot be read, once it is tried
    cli.execute(lambda: _predict(paths, failures), clean_stops=False)
    if failures:
        cli.exit_now(
            1,
            f"error: {len(failures)} of {len(paths) + len(problems)} image(s) could not be read (each named above); the others were predicted.",
        )
    cli.exit_now(0)  # not the teardown of JAX's backends


def _predict(paths: list[str], failures: list[str]) -> None:
    """Predicts the image files `paths` and the test images the flags ask for, prints each and
    draws the first `_FIGURE_ROWS`; adds each file that cannot be read to `failures`."""
    if not paths and not failures and not _TEST_INDICES.value and not _RANDOM.value:
        raise UserError(
            "Nothing to predict: pass --images FILE ..., --test_indices=I,J or --random=N."
        )
    if _TOP.value < 1:
        raise UserError(f"--top={_TOP.value} prints no class: pass --top=1 or more (10 lists all).")
    output = _OUTPUT.value or os.path.join(_WORKDIR.value, "predictions.png")
    cli.check_output(output)
    figure_workers.start()  # they import matplotlib while this process imports JAX
    from fmnist_jax import inference

    classifier = inference.load(_WORKDIR.value, _WHICH.value)
    for problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    batch, titles = images.read_files(paths, _MAX_PIXELS.value, failures)
    truths: list[int | None] = [None] * len(batch)
    if _TEST_INDICES.value or _RANDOM.value:
        splits = data.load(classifier.config.data)
        n = len(splits.test_labels)
        indices = cli.test_indices(_TEST_INDICES.value, n, _RANDOM.value, _SEED.value)
        batch += [splits.test_images[i] for i in indices]
        titles += [f"test #{i}" for i in indices]
        truths += [int(splits.test_labels[i]) for i in indices]
    if not batch:
        raise UserError("None of the images could be read; nothing was predicted.")
    probabilities = classifier.predict_proba(np.stack(batch))
    names = classifier.class_names
    for title, p, truth in zip(titles, probabilities, truths, strict=True):
        top = np.argsort(-p)[: _TOP.value]
        ranked = ", ".join(f"{names[k]} {p[k]:.3f}" for k in top)
        print(f"{title}: {ranked}" + ("" if truth is None else f"  (true: {names[truth]})"))
    shown = slice(_FIGURE_ROWS)
    figure = {
        "images": np.stack(batch[shown]),
        "probabilities": probabilities[shown],
        "class_names": names,
        "titles": titles[shown],
        "true_labels": truths[shown],
    }
    with workdir_lib.locked_if_inside(_WORKDIR.value, [output]), writing(output):
        figure_workers.draw([("predictions", figure, output)])
    more = len(batch) - _FIGURE_ROWS
    shown_note = f" (the first {_FIGURE_ROWS} images; the other {more} are printed above)"
    print(f"Figure written to {output}{shown_note if more > 0 else ''}.")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
