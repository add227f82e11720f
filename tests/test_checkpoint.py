"""Orbax checkpoints: kill-and-resume, fallback past a damaged checkpoint, restore for inference,
predict and evaluate CLIs, export."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from conftest import kill_after_checkpoint, tiny_cli_args
from PIL import Image

from configs import mlp as mlp_config
from fmnist_jax import data, inference
from fmnist_jax.errors import UserError
from fmnist_jax.inference import export, images
from fmnist_jax.records import checkpoint
from fmnist_jax.training import train


def _mock_train(config, workdir):
    return train.train_and_evaluate(config, str(workdir))


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {
                k: v
                for k, v in json.loads(line).items()
                if k not in ("epoch_seconds", "examples_per_second")
            }
            for line in f
        ]


def _assert_same_weights(a_workdir, b_workdir):
    a, _ = checkpoint.restore_model(str(a_workdir), "final")
    b, _ = checkpoint.restore_model(str(b_workdir), "final")
    flat_a, flat_b = (sorted(json.dumps(str(k)) for k in x) for x in (a, b))
    assert flat_a == flat_b
    import jax

    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(mock_tfds_dir, tmp_path):
    def command(workdir):
        return [
            sys.executable,
            "-m",
            "fmnist_jax.main",
            f"--workdir={workdir}",
            *tiny_cli_args(mock_tfds_dir, 25),
            "--config.checkpoint.min_interval_seconds=0",  # a checkpoint every epoch to kill after
        ]

    reference = subprocess.run(
        command(tmp_path / "ref"), capture_output=True, text=True, timeout=600
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    killed = tmp_path / "killed"
    kill_after_checkpoint(command(killed), killed / "checkpoints" / "latest", 3)
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    epochs_done = len(_rows(killed))
    assert 3 <= epochs_done < 25

    resumed = subprocess.run(command(killed), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming after epoch" in resumed.stderr
    assert _rows(killed) == _rows(tmp_path / "ref")
    ref_summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    summary = json.loads((killed / "summary.json").read_text())
    assert (summary["test_accuracy"], summary["test_loss"]) == (
        ref_summary["test_accuracy"],
        ref_summary["test_loss"],
    )
    _assert_same_weights(killed, tmp_path / "ref")


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tiny_config, tmp_path):
    tiny_config.num_epochs = 3
    tiny_config.checkpoint.min_interval_seconds = 0  # epochs 2 and 3 kept
    reference = _mock_train(tiny_config, tmp_path / "ref")
    run = tmp_path / "run"
    _mock_train(tiny_config, run)
    # Damage the newest checkpoint and forget that the run finished.
    for path in (run / "checkpoints" / "latest" / "3" / "train").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    shutil.rmtree(run / "checkpoints" / "final")
    (run / "summary.json").unlink()
    resumed = _mock_train(tiny_config, run)
    assert (
        resumed["test_accuracy"] == reference["test_accuracy"]
        and resumed["test_loss"] == reference["test_loss"]
    )
    assert _rows(run) == _rows(tmp_path / "ref")


def _flip_bytes(step):
    """64 bytes inverted in the middle of the largest file of a checkpoint (its weights)."""
    largest = max((p for p in step.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data_ = bytearray(largest.read_bytes())
    middle = len(data_) // 2
    data_[middle : middle + 64] = bytes(b ^ 0xFF for b in data_[middle : middle + 64])
    largest.write_bytes(bytes(data_))


@pytest.mark.parametrize("asynchronous", [True, False], ids=["async", "sync"])
def test_a_changed_byte_is_refused_naming_the_checkpoint_and_resume_falls_back(
    tiny_config, tmp_path, asynchronous
):
    """Every checkpoint holds the digest of its files from when it was committed; a changed byte
    is one error naming it and the other checkpoints (never itself), and resume takes the one
    before it, as for a truncated checkpoint."""
    tiny_config.num_epochs = 3
    tiny_config.checkpoint.min_interval_seconds = 0  # epochs 2 and 3 kept
    tiny_config.checkpoint.asynchronous = asynchronous
    reference = _mock_train(tiny_config, tmp_path / "ref")
    run = tmp_path / "run"
    _mock_train(tiny_config, run)
    steps = [p for p in (run / "checkpoints").glob("*/*") if p.name.isdigit()]
    assert len(steps) >= 4 and all((p / checkpoint.DIGEST_FILE).is_file() for p in steps)
    (final,) = (run / "checkpoints" / "final").glob("[0-9]*")
    _flip_bytes(final)
    with pytest.raises(UserError) as refused:
        inference.load(str(run))
    message = str(refused.value)
    assert "'final' checkpoint" in message and "changed since it was saved" in message
    assert "--which=latest or --which=best" in message and "--which=final" not in message
    assert "\n" not in message
    _flip_bytes(run / "checkpoints" / "latest" / "3")
    shutil.rmtree(run / "checkpoints" / "final")
    (run / "summary.json").unlink()
    resumed = _mock_train(tiny_config, run)
    assert [p.name.split("-")[:2] for p in (run / "checkpoints" / "damaged").iterdir()] == [
        ["latest", "3"]
    ]  # only the changed one: the run resumed after epoch 2
    assert (resumed["test_accuracy"], resumed["test_loss"]) == (
        reference["test_accuracy"],
        reference["test_loss"],
    )
    assert _rows(run) == _rows(tmp_path / "ref")


def _saved_epochs(workdir, kind):
    return sorted(
        int(p.name) for p in (workdir / "checkpoints" / kind).iterdir() if p.name.isdigit()
    )


@pytest.mark.parametrize(
    "min_interval_seconds, latest", [(0, [2, 3, 4]), (3600, [4])], ids=["every_epoch", "last_only"]
)
def test_latest_checkpoints_follow_the_clock_and_the_last_epoch(
    tiny_config, tmp_path, min_interval_seconds, latest
):
    """Fast epochs are not each saved (a save costs more CPU than an epoch of a small model); the
    last epoch always is, and so is every improvement of the validation accuracy in `best/`."""
    tiny_config.num_epochs = 4
    tiny_config.checkpoint.min_interval_seconds = min_interval_seconds
    _mock_train(tiny_config, tmp_path)
    assert _saved_epochs(tmp_path, "latest") == latest
    val = [r["val_accuracy"] for r in _rows(tmp_path)]
    improved = [e for e in range(1, 5) if val[e - 1] > max(val[: e - 1], default=-1.0)]
    assert _saved_epochs(tmp_path, "best") == improved[-1:]


@pytest.mark.slow
def test_checkpoint_of_another_config_is_refused_naming_the_keys(tiny_config, tmp_path):
    tiny_config.num_epochs = 1
    _mock_train(tiny_config, tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "summary.json").unlink()
    tiny_config.model.hidden_sizes = (32,)
    with pytest.raises(
        UserError,
        match="checkpoint .* different config \\(model.hidden_sizes: \\[16\\] there, \\[32\\] now\\)",
    ):
        _mock_train(tiny_config, tmp_path)


@pytest.mark.slow
def test_asynchronous_saving_does_not_change_results(tiny_config, tmp_path):
    _mock_train(tiny_config, tmp_path / "async")
    tiny_config.checkpoint.asynchronous = False
    _mock_train(tiny_config, tmp_path / "sync")
    assert _rows(tmp_path / "async") == _rows(tmp_path / "sync")
    _assert_same_weights(tmp_path / "async", tmp_path / "sync")


@pytest.fixture(scope="module")
def trained(prepared_tfds_dir, tmp_path_factory):
    """The reference MLP trained 2 epochs on the real data; (workdir, summary, test split)."""
    config = mlp_config.get_config()
    config.num_epochs, config.plots = 2, False
    config.data.tfds_data_dir = prepared_tfds_dir
    workdir = tmp_path_factory.mktemp("trained")
    summary = train.train_and_evaluate(config, str(workdir))
    return workdir, summary, data.load(config.data)


@pytest.mark.slow
def test_restored_classifier_reproduces_the_summary_accuracy(trained):
    workdir, summary, splits = trained
    classifier = inference.load(str(workdir))
    assert classifier.class_names[0] == "T-shirt/top" and classifier.epoch == 2
    accuracy = float((classifier.predict(splits.test_images) == splits.test_labels).mean())
    assert accuracy == summary["test_accuracy"]


def test_predict_proba_accepts_hw_hwc_nhwc_uint8_and_float(trained):
    workdir, _, splits = trained
    classifier = inference.load(str(workdir), "best")
    batch = splits.test_images[:5]
    p = classifier.predict_proba(batch)
    assert p.shape == (5, 10) and np.allclose(p.sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(classifier.predict_proba(batch[0]), p[:1], atol=1e-6)
    np.testing.assert_allclose(classifier.predict_proba(batch[0, ..., 0]), p[:1], atol=1e-6)
    np.testing.assert_allclose(
        classifier.predict_proba(batch.astype(np.float32) / 255.0), p, atol=1e-5
    )
    np.testing.assert_array_equal(classifier.predict_proba(batch.astype(np.int64)), p)
    rows = batch.reshape(5, 784)  # a CSV's rows, or an MLP tutorial's flattened images
    np.testing.assert_array_equal(classifier.predict_proba(rows), p)
    np.testing.assert_array_equal(classifier.predict_proba(rows[0]), p[:1])
    assert classifier.predict_proba(np.repeat(batch, 120, axis=0)).shape == (600, 10)


@pytest.mark.parametrize(
    "images, phrase",
    [
        (np.full((28, 28), 200.0), "scaled to [0, 1], got 200 to 200: divide them by 255"),
        (np.full((2, 28, 28), -0.5, np.float32), "scaled to [0, 1], got -0.5 to -0.5"),
        (np.full((28, 28), np.nan, np.float32), "NaN or infinite"),
        (np.full((28, 28, 1), 300), "pixel values in 0-255, got 300 to 300"),
        (np.full((28, 28), "a"), "got dtype <U1"),
        (np.zeros((28, 28, 3), np.uint8), "got shape (28, 28, 3). An image file or a photo"),
        (
            "shirt.jpg",
            "got shape (). An image file or a photo of another size or in color: pass "
            "fmnist_jax.inference.images.read(path)",
        ),
    ],
    ids=["float 0-255", "negative", "nan", "int over 255", "strings", "color", "a path"],
)
def test_images_that_would_predict_wrongly_are_refused(images, phrase):
    with pytest.raises(UserError) as refused:
        inference.as_batch(images)
    assert phrase in str(refused.value)


def test_predictions_of_any_weights_share_one_program(trained):
    """The weights are arguments of the compiled prediction, not constants in it: a model of the same
    shape (another run, seed, learning rate) finds its program in the compilation cache."""
    workdir, _, splits = trained
    restored = inference.load(str(workdir))
    v = restored.variables
    other = dataclasses.replace(
        restored, variables={**v, "params": jax.tree.map(lambda a: 2 * a, v["params"])}
    )
    images = splits.test_images[:256]

    def lowered(c):  # what the compilation cache is keyed on
        return c._jitted.lower(jax.device_put(c._weights), images).as_text()

    assert lowered(restored) == lowered(other)
    assert not np.allclose(restored.predict_proba(images), other.predict_proba(images))


def test_exported_function_gives_the_restored_probabilities(trained):
    workdir, _, splits = trained
    exported = export.load(str(workdir / "export" / export.FILENAME))
    expected = inference.load(str(workdir)).predict_proba(splits.test_images[:7])
    np.testing.assert_allclose(
        np.asarray(exported.call(splits.test_images[:7])), expected, atol=1e-6
    )


def test_photo_like_image_is_converted_to_light_on_dark(tmp_path):
    photo = np.full((600, 450, 3), 230, np.uint8)
    photo[150:450, 100:350] = (30, 40, 90)  # a dark garment on a light background
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    x = images.read(str(tmp_path / "photo.jpg"))
    assert x.shape == (28, 28, 1) and x.dtype == np.uint8
    assert x[14, 14, 0] > 180 and x[1, 14, 0] < 60


def test_an_image_reads_the_same_at_every_bit_depth_and_with_transparency(tmp_path):
    """16-bit PNGs and float TIFFs hold the same picture as an 8-bit PNG in a wider range (PIL's own
    conversion to 8 bits clips them at 255: a white square, predicted as anything); a transparent
    background reads as the light background it shows, whatever color it hides."""
    gray = np.full((56, 40), 255, np.uint8)
    gray[8:48, 6:34] = np.linspace(20, 120, 28, dtype=np.uint8)  # a dark garment, light background
    Image.fromarray(gray).save(tmp_path / "8bit.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / "unit_float.tiff")
    Image.fromarray(gray.astype(np.float32)).save(tmp_path / "float_0_255.tiff")
    cutout = np.where(gray == 255, 0, gray).astype(np.uint8)  # black where transparent
    Image.fromarray(cutout).save(tmp_path / "gray_transparent_black.png", transparency=0)
    Image.fromarray(
        np.dstack([cutout] * 3 + [np.where(gray == 255, 0, 255).astype(np.uint8)])
    ).save(tmp_path / "rgba_cutout.png")
    expected = images.read(str(tmp_path / "8bit.png"))
    assert expected[14, 14, 0] > 120 and expected[14, 2, 0] == 0  # light garment on black
    for name in (
        "16bit.png",
        "unit_float.tiff",
        "float_0_255.tiff",
        "gray_transparent_black.png",
        "rgba_cutout.png",
    ):
        difference = np.abs(images.read(str(tmp_path / name)).astype(int) - expected).max()
        assert difference <= 1, (name, difference)


def test_a_photo_reads_upright_as_its_exif_orientation_shows_it(tmp_path):
    """Phones store a portrait photo sideways with an EXIF orientation tag that viewers apply."""
    upright = np.full((60, 40), 250, np.uint8)
    upright[5:30, 8:32] = 30  # a dark garment in the top half, light background
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "sideways.png", exif=exif)
    expected = images.read(str(tmp_path / "upright.png"))
    assert expected[6, 14, 0] > 180 and expected[22, 14, 0] < 60  # the garment is on top
    np.testing.assert_array_equal(images.read(str(tmp_path / "sideways.png")), expected)
    Image.fromarray(upright).save(tmp_path / "damaged_exif.png", exif=b"II*\x00\xff\xff\xff\x7f")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged EXIF block: the picture as stored, no word
        np.testing.assert_array_equal(images.read(str(tmp_path / "damaged_exif.png")), expected)


@pytest.mark.slow
def test_predict_and_evaluate_clis_agree_without_tensorflow(trained, tmp_path, without_tensorflow):
    workdir, summary, splits = trained
    photo = np.full((480, 640, 3), 240, np.uint8)
    photo[100:400, 200:440] = (20, 20, 20)
    Image.fromarray(photo).save(tmp_path / "big_photo.jpg")
    Image.fromarray(splits.test_images[3][..., 0]).save(tmp_path / "item.png")
    Image.fromarray(
        np.dstack([splits.test_images[3][..., 0]] * 3 + [np.full((28, 28), 255, np.uint8)]), "RGBA"
    ).save(tmp_path / "rgba.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    figure = tmp_path / "predictions.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist_jax.predict",
            f"--workdir={workdir}",
            "--images",
            str(tmp_path / "big_photo.jpg"),
            str(tmp_path / "broken.png"),
            str(tmp_path / "item.png"),
            str(tmp_path / "rgba.png"),
            "--test_indices=0,17,42",
            "--random=16",  # 22 images in all: the figure draws the first 20
            f"--output={figure}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=without_tensorflow,
    )
    assert (
        result.returncode == 1 and "broken.png could not be read" in result.stderr
    )  # the others still predicted
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if ":" in line}
    assert {"big_photo.jpg", "item.png", "rgba.png", "test #0", "test #17", "test #42"} <= set(
        lines
    )
    assert sum(line.startswith("test #") for line in result.stdout.splitlines()) == 19
    assert "(the first 20 images; the other 2 are printed above)" in result.stdout
    assert Image.open(figure).size == (640, 20 * 176)  # 8 x 2.2 inches a row at 80 dpi

    evaluation = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.evaluate", f"--workdir={workdir}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=without_tensorflow,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    metrics = json.loads((workdir / "eval" / "final" / "metrics.json").read_text())
    assert metrics["accuracy"] == summary["test_accuracy"]
    assert (
        np.array(metrics["confusion_matrix"]).sum() == 10_000
        and len(metrics["per_class_accuracy"]) == 10
    )
    Image.open(workdir / "eval" / "final" / "confusion_matrix.png").verify()
    names = inference.load(str(workdir)).class_names
    for i in (0, 17, 42):
        assert lines[f"test #{i}"].split(": ")[1].startswith(names[metrics["predictions"][i]] + " ")
    same_item = [lines[k].split(": ")[1].split(" ")[0] for k in ("item.png", "rgba.png")]
    assert same_item[0] == same_item[1] == names[metrics["predictions"][3]]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fmnist_jax.evaluate", "fmnist_jax.predict"])
def test_ctrl_c_stops_a_command_with_nothing_to_finish_at_once(trained, command):
    """Training stops at its next check and saves; predict and evaluate have nothing to save, so
    Ctrl-C stops them at once (it was taken as a stop request that nothing asked for)."""
    workdir, _, _ = trained
    extra = (
        ["--random=3", f"--output={workdir / 'interrupted.png'}"] if "predict" in command else []
    )
    process = subprocess.Popen(
        [sys.executable, "-m", command, f"--workdir={workdir}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children = f"/proc/{process.pid}/task/{process.pid}/children"
    deadline = time.monotonic() + 60
    while not open(children).read().strip() and time.monotonic() < deadline:
        time.sleep(0.02)  # the figure workers start once the command's signal handling is set
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "Stopped by SIGINT." and "Traceback" not in stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        inference.load(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match=r"No 'final' checkpoint in .*resumes and finishes it\.$"):
        inference.load(str(tmp_path))
    (tmp_path / "checkpoints" / "latest" / "1").mkdir(parents=True)
    with pytest.raises(UserError, match="No 'final' .* or pass --which=latest "):
        inference.load(str(tmp_path))
    (tmp_path / "checkpoints" / "final" / "1").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no validation split .* --which=latest or --which=final "):
        inference.load(str(tmp_path), "best")  # a finished run with data.num_validation=0


def test_runs_from_before_a_key_existed_count_it_at_its_default():
    from fmnist_jax.records import workdir as workdir_lib

    current = workdir_lib.config_as_json(mlp_config.get_config())
    previous = {k: v for k, v in current.items() if k not in ("ema_decay", "test_time_flip")}
    assert workdir_lib.config_differences(previous, current) == []
    current["ema_decay"] = 0.999
    current["plots"], current["profile"] = False, True  # what a run writes besides its results
    assert workdir_lib.config_differences(previous, current) == ["ema_decay: 0.0 there, 0.999 now"]


def _write_previous_layout(source, kind, epoch, target):
    """Rewrites checkpoint `kind/epoch` of workdir `source` into `target` as releases before the run
    axis wrote a single run: every array but the normalizer without its leading axis, no layout."""
    import orbax.checkpoint as ocp

    src = ocp.CheckpointManager(
        checkpoint.directory(str(source), kind),
        options=ocp.CheckpointManagerOptions(create=False),
        item_handlers=checkpoint._handlers(),
    )
    meta = src.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    names = ("model", "train") if kind == "latest" else ("model",)
    restored = src.restore(
        epoch, args=ocp.args.Composite(**{n: ocp.args.StandardRestore() for n in names})
    )
    items = {
        n: ocp.args.StandardSave(
            checkpoint._map_run_arrays(lambda a: np.array(np.asarray(a)[0]), restored[n])
        )
        for n in names
    }
    src.close()
    dst = ocp.CheckpointManager(
        checkpoint.directory(str(target), kind), item_handlers=checkpoint._handlers()
    )
    dst.save(
        epoch,
        args=ocp.args.Composite(
            **items, meta=ocp.args.JsonSave({k: v for k, v in meta.items() if k != "layout"})
        ),
    )
    dst.wait_until_finished()
    dst.close()


@pytest.mark.slow
def test_single_run_checkpoints_of_the_previous_layout_resume_and_restore(tiny_config, tmp_path):
    tiny_config.checkpoint.min_interval_seconds = 0  # latest/1 to rewrite
    reference = train.train_and_evaluate(tiny_config, str(tmp_path / "ref"))
    old = tmp_path / "old"
    _write_previous_layout(tmp_path / "ref", "latest", 1, old)
    _write_previous_layout(tmp_path / "ref", "final", 2, old)
    shutil.copy(tmp_path / "ref" / "config.json", old / "config.json")
    images = data.load(tiny_config.data).test_images
    expected = inference.load(str(tmp_path / "ref")).predict_proba(images)
    converted = inference.load(str(old)).predict_proba(images)  # converted on restore
    np.testing.assert_array_equal(converted, expected)
    resumed = train.train_and_evaluate(tiny_config, str(old))  # resumes after epoch 1
    assert not (old / "checkpoints" / "damaged").exists()  # converted, not set aside and retrained
    assert (resumed["test_loss"], resumed["test_accuracy"]) == (
        reference["test_loss"],
        reference["test_accuracy"],
    )
    assert _rows(old) == _rows(tmp_path / "ref")
