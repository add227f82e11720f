"""What a trained network sees: attributions, activations, first-layer weights and the embedding.

    python -m fmnist_jax.explain --workdir=DIR --test_indices=0,17,42 [--images FILE ...] --output=FILE.png
    python -m fmnist_jax.explain --workdir=DIR --weights --output=weights.png
    python -m fmnist_jax.explain --workdir=DIR --embedding --output=embedding.png

Per image: the input; integrated gradients for the predicted class and, for test images, the true
one (Grad-CAM's maps too, for conv models); the top 3 probabilities; each layer's activations (an
MLP's hidden units as a grid, a CNN's first 16 channels of each block). `--weights` draws the
first layer's weights (an MLP's units as 28x28 templates, a CNN's filters); `--embedding` draws a
PCA map (`--map=tsne`: t-SNE, with scikit-learn) of the test set's penultimate features coloured
by class, and writes them for
TensorBoard's Embedding Projector (labels and sprite images) to DIR/tensorboard/projector/:
`tensorboard --logdir=DIR/tensorboard`, tab "Projector". Images from files are converted as
`predict` converts them; a file that cannot be read is named and the others explained (exit 1).
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

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained run.", required=True)
_WHICH = flags.DEFINE_enum("which", "final", ["final", "best", "latest"], "Which checkpoint.")
_IMAGES = flags.DEFINE_list("images", [], "Image files, directories of them or quoted patterns.")
_TEST_INDICES = flags.DEFINE_list("test_indices", [], "Indices into the test split, e.g. 0,17,42.")
_WEIGHTS = flags.DEFINE_bool("weights", False, "Draw the first layer's weights instead.")
_EMBEDDING = flags.DEFINE_bool("embedding", False, "Map the test set's embedding instead.")
_MAP = flags.DEFINE_enum(
    "map", "pca", ["pca", "tsne"], "--embedding's 2-D map: PCA, or t-SNE (scikit-learn)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Figure path (default: <workdir>/explain.png).")
_STEPS = flags.DEFINE_integer("steps", 64, "Integrated gradients' steps along the path.")
_MAX_IMAGES = 12  # rows of the per-image figure


def main(argv: list[str]) -> None:
    paths, problems = images.files(list(_IMAGES.value) + argv[1:])
    failures = list(problems)
    cli.execute(lambda: _explain(paths, failures), clean_stops=False)
    if failures:
        cli.exit_now(1, f"error: {len(failures)} image(s) could not be read (each named above).")
    cli.exit_now(0)


def _explain(paths: list[str], failures: list[str]) -> None:
    chosen = [bool(paths or failures or _TEST_INDICES.value), _WEIGHTS.value, _EMBEDDING.value]
    if sum(chosen) != 1:
        raise UserError(
            "Explain one thing at a time: images (--test_indices=I,J or --images FILE ...), "
            "--weights, or --embedding."
        )
    from fmnist_jax.inference import interpret

    if not 1 <= _STEPS.value <= interpret.MAX_STEPS:
        raise UserError(
            f"--steps={_STEPS.value}: integrated gradients take 1 to {interpret.MAX_STEPS} steps "
            "along the path (64, the default, is usually enough)."
        )
    output = _OUTPUT.value or os.path.join(_WORKDIR.value, "explain.png")
    cli.check_output(output)
    from fmnist_jax import inference
    from fmnist_jax.reports import explain_plots, plots, projector

    classifier = inference.load(_WORKDIR.value, _WHICH.value)
    board = os.path.join(_WORKDIR.value, "tensorboard", "projector")
    if _WEIGHTS.value:
        figure = explain_plots.first_layer(classifier.first_layer_weights())
    elif _EMBEDDING.value:
        splits = data.load(classifier.config.data)
        features = classifier.embed(splits.test_images)
        points = projector.tsne(features) if _MAP.value == "tsne" else projector.pca(features)
        figure = explain_plots.embedding(
            points,
            splits.test_labels,
            classifier.class_names,
            _MAP.value.upper().replace("TSNE", "t-SNE"),
        )
    else:
        figure = _per_image(classifier, paths, failures)
    with workdir_lib.locked_if_inside(_WORKDIR.value, [output, board]):
        if _EMBEDDING.value:
            written = projector.write(
                board, features, splits.test_labels, splits.test_images, classifier.class_names
            )
            print(
                f"Embedding Projector files in {written}: tensorboard --logdir={os.path.dirname(written)}"
            )
        with writing(output):
            plots.save(figure, output)
    print(f"Figure written to {output}.")


def _per_image(classifier, paths: list[str], failures: list[str]):
    from fmnist_jax.reports import explain_plots

    for problem in failures:
        print(f"error: {problem}", file=sys.stderr)
    batch, titles = images.read_files(paths, images.MAX_PIXELS, failures)
    truths: list[int | None] = [None] * len(batch)
    if _TEST_INDICES.value:
        splits = data.load(classifier.config.data)
        indices = cli.test_indices(_TEST_INDICES.value, len(splits.test_labels))
        batch += [splits.test_images[i] for i in indices]
        titles += [f"test #{i} ({classifier.class_names[splits.test_labels[i]]})" for i in indices]
        truths += [int(splits.test_labels[i]) for i in indices]
    if not batch:
        raise UserError("None of the images could be read; nothing was explained.")
    if len(batch) > _MAX_IMAGES:
        print(f"Explaining the first {_MAX_IMAGES} of {len(batch)} images (one figure row each).")
    x = np.stack(batch[:_MAX_IMAGES])
    probabilities = classifier.predict_proba(x)
    predicted = probabilities.argmax(-1)
    maps = {
        "integrated gradients, predicted": classifier.attributions(x, steps=_STEPS.value)[..., 0]
    }
    if any(t is not None for t in truths):
        true = np.array([p if t is None else t for p, t in zip(predicted, truths, strict=False)])
        maps["integrated gradients, true"] = classifier.attributions(
            x, targets=true, steps=_STEPS.value
        )[..., 0]
    if classifier.conv_map_name is not None:  # a model with convolutions
        maps["Grad-CAM, predicted"] = classifier.attributions(x, method="grad_cam")
    layers = {
        name: value
        for name, value in classifier.activations(x).items()
        if name != "logits" and not name.endswith("features")
    }
    names = [f"{t}: {classifier.class_names[p]}" for t, p in zip(titles, predicted, strict=False)]
    return explain_plots.explanations(x, names, probabilities, classifier.class_names, maps, layers)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
