"""What the network sees: activations are the model's own, integrated gradients are complete,
Grad-CAM has the last conv map's shape, the Projector files parse, the figures are written, and bad
input is refused."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import MOCK_EXAMPLES

from fmnist_jax import inference
from fmnist_jax.errors import UserError
from fmnist_jax.reports import projector
from fmnist_jax.training import train


@pytest.fixture(scope="module")
def trained(mock_tfds_dir, tmp_path_factory):
    """A tiny MLP and a tiny CNN, each trained 2 epochs on the mock data: {name: workdir}."""
    from fmnist_jax import config as config_lib

    workdirs = {}
    for name in ("mlp", "cnn"):
        c = config_lib.default()
        c.plots, c.num_epochs, c.batch_size, c.eval_batch_size = False, 2, 8, 16
        c.data.num_validation, c.data.tfds_data_dir = 16, mock_tfds_dir
        if name == "cnn":
            c.model = config_lib.ConfigDict(
                {"name": "cnn", "conv_channels": (4, 8), "hidden_sizes": (16,)}
            )
        else:
            c.model.hidden_sizes = (16,)
        workdirs[name] = str(tmp_path_factory.mktemp(name))
        train.train_and_evaluate(c, workdirs[name])
    return workdirs


def _images(n=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), np.uint8)


def test_activations_are_the_models_own_forward_pass(trained):
    classifier = inference.load(trained["mlp"])
    x = _images()
    layers = classifier.activations(x)
    params = classifier.variables["params"]["head"]
    hidden = np.maximum(
        (x.reshape(5, -1) / 255.0) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0
    )
    np.testing.assert_allclose(layers["head.hidden0"], hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layers["head.features"], hidden, rtol=1e-5, atol=1e-6)
    logits = layers["logits"]
    np.testing.assert_allclose(
        np.exp(logits) / np.exp(logits).sum(-1, keepdims=True),
        classifier.predict_proba(x),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_array_equal(classifier.embed(x), layers["head.features"])
    cnn = inference.load(trained["cnn"]).activations(x)
    assert cnn["block0"].shape == (5, 14, 14, 4) and cnn["block1"].shape == (5, 7, 7, 8)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_integrated_gradients_add_up_to_the_logit_difference(trained, model):
    """Completeness: the attributions sum to logit(image) - logit(baseline) for the target class;
    the trapezoid rule's error shrinks with the steps (64 here: within 2%)."""
    classifier = inference.load(trained[model])
    x = _images(seed=1)
    targets = np.arange(5) % 10
    attributions = classifier.attributions(x, targets=targets, steps=64)
    assert attributions.shape == (5, 28, 28, 1)
    logits = classifier.activations(x)["logits"][np.arange(5), targets]
    baseline = classifier.activations(np.zeros((5, 28, 28, 1), np.uint8))["logits"][
        np.arange(5), targets
    ]
    np.testing.assert_allclose(
        attributions.sum(axis=(1, 2, 3)), logits - baseline, rtol=0.02, atol=2e-3
    )
    saliency = classifier.attributions(x, method="gradients")
    assert saliency.shape == (5, 28, 28, 1) and np.abs(saliency).sum() > 0


def test_grad_cam_has_the_last_conv_maps_shape_and_is_never_negative(trained):
    cam = inference.load(trained["cnn"]).attributions(_images(), method="grad_cam")
    assert cam.shape == (5, 7, 7) and (cam >= 0).all()
    with pytest.raises(UserError, match="Grad-CAM weighs a convolutional feature map"):
        inference.load(trained["mlp"]).attributions(_images(), method="grad_cam")
    with pytest.raises(UserError, match="Unknown attribution method"):
        inference.load(trained["mlp"]).attributions(_images(), method="lime")


def test_projector_files_are_what_tensorboards_plugin_reads(tmp_path):
    projector_config_pb2 = pytest.importorskip("tensorboard.plugins.projector.projector_config_pb2")
    from google.protobuf import text_format

    features = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    labels = np.arange(7) % 3
    directory = projector.write(str(tmp_path), features, labels, _images(7), ("a", "b", "c"))
    config = text_format.Parse(
        open(os.path.join(directory, projector.CONFIG_FILE)).read(),
        projector_config_pb2.ProjectorConfig(),
    )
    (embedding,) = config.embeddings
    np.testing.assert_allclose(
        np.loadtxt(os.path.join(directory, embedding.tensor_path)), features, rtol=1e-4
    )
    metadata = open(os.path.join(directory, embedding.metadata_path)).read().splitlines()
    assert metadata == ["a", "b", "c", "a", "b", "c", "a"]
    assert list(embedding.sprite.single_image_dim) == [28, 28]
    from PIL import Image

    assert Image.open(os.path.join(directory, embedding.sprite.image_path)).size == (84, 84)
    points = projector.pca(features)
    assert points.shape == (7, 2) and abs(points[:, 0].var()) >= abs(points[:, 1].var())


def _explain(*args):
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.explain", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_figure_is_written(trained, tmp_path, model):
    workdir = trained[model]
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(_images(1)[0, ..., 0]).save(photo)
    for name, extra in (
        ("images.png", ["--test_indices=0,3", f"--images={photo}"]),
        ("weights.pdf", ["--weights"]),
        ("embedding.svg", ["--embedding"]),
        ("tsne.png", ["--embedding", "--map=tsne"]),
    ):
        output = tmp_path / name
        result = _explain(f"--workdir={workdir}", f"--output={output}", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        assert output.stat().st_size > 5000, name
        magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}[name.rpartition(".")[2]]
        assert output.read_bytes().startswith(magic), name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["photo.png", "images.png", "weights.pdf", "embedding.svg", "tsne.png"]
    )  # no partial file left beside them
    projected = os.path.join(workdir, "tensorboard", "projector")
    assert len(open(os.path.join(projected, "metadata.tsv")).read().splitlines()) == MOCK_EXAMPLES


def _files(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(pathlib.Path(directory).rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_bad_input_is_one_clear_error_and_writes_nothing(trained, tmp_path):
    workdir = trained["mlp"]
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    before = _files(workdir)
    for args, phrase in (
        (["--weights", "--embedding"], "Explain one thing at a time"),
        (["--test_indices=0,99999"], "out of range"),
        (["--test_indices=a"], "must be integers"),
        ([f"--images={tmp_path / 'missing.png'}"], "missing.png"),
        (["--test_indices=0", "--steps=-1"], "integrated gradients take 1 to 1000 steps"),
        (["--test_indices=0", "--steps=0"], "integrated gradients take 1 to 1000 steps"),
        (["--test_indices=0", "--steps=1000000"], "integrated gradients take 1 to 1000 steps"),
        (["--weights", "--output=/dev/full"], "not a regular file"),
        (["--weights", f"--output={tmp_path / 'x.tiff'}"], "written as .png, .pdf, .svg"),
        ([f"--images={fifo}"], "is not a regular file"),
    ):
        if not any(a.startswith("--output") for a in args):
            args = [*args, f"--output={tmp_path / 'x.png'}"]
        result = _explain(f"--workdir={workdir}", *args)
        assert result.returncode == 1, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and phrase in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.tiff").exists()
    assert _files(workdir) == before


def test_attributions_refuse_steps_outside_their_range(trained):
    classifier = inference.load(trained["mlp"])
    for steps in (0, -3, 1001, 2.5):
        with pytest.raises(UserError, match="steps must be an integer from 1 to 1000"):
            classifier.attributions(_images(1), steps=steps)
