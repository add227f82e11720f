"""End to end through `train_and_evaluate`: mock data for behaviour, the real data for accuracy."""

import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import noise, tolerance

from fmnist_jax import data, inference
from fmnist_jax.errors import UserError
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports.run import RunReports
from fmnist_jax.training import loop_state, train


def _train(config, workdir):
    return train.train_and_evaluate(config, str(workdir))


def _without_timings(rows):
    return [
        {k: v for k, v in r.items() if k not in ("epoch_seconds", "examples_per_second")}
        for r in rows
    ]


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_mock_run_writes_config_metrics_and_summary(tiny_config, tmp_path):
    summary = _train(tiny_config, tmp_path)
    rows = _rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "epoch_seconds",
        "examples_per_second",
        "learning_rate",
    ):
        assert all(key in r for r in rows)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))  # what JSON keeps of it, exactly
    # The reported weights are the last epoch's: its validation, not evaluated again.
    assert {k: summary[k] for k in rows[-1] if k.startswith("val_")} == {
        k: v for k, v in rows[-1].items() if k.startswith("val_")
    }
    for key in (
        "test_accuracy",
        "test_loss",
        "best_val_accuracy",
        "epochs_run",
        "train_seconds",
        "examples_per_second",
        "num_params",
        "backend",
        "devices",
    ):
        assert key in summary
    assert (
        summary["epochs_run"] == 2
        and summary["backend"] == jax.default_backend()
        and summary["devices"] == 1
    )
    assert summary["num_params"] == 784 * 16 + 16 + 16 * 10 + 10
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_sizes"] == [16]
    assert not tiny_config.plots and not (tmp_path / "plots").exists()


def _events(path):
    """The `Event` records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    raw, events, pos = path.read_bytes(), [], 0
    while pos < len(raw):
        (length,) = struct.unpack("<Q", raw[pos : pos + 8])
        events.append(Event.FromString(raw[pos + 12 : pos + 12 + length]))
        pos += 12 + length + 4
    return events


@pytest.mark.slow
def test_train_and_validation_curves_overlay_as_keras_writes_them(tiny_config, tmp_path):
    """Keras' TensorBoard callback: runs `train/` and `validation/` with the same tags, so the two
    curves share one chart; read back with TensorBoard's own event reader."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    _train(tiny_config, tmp_path)
    rows = _rows(tmp_path)
    for run, prefix in (("train", "train"), ("validation", "val")):
        reader = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / run))
        reader.Reload()
        assert set(reader.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy"}
        for tag in ("loss", "accuracy"):
            logged = [(e.step, e.value) for e in reader.Scalars(f"epoch_{tag}")]
            expected = [(r["epoch"], r[f"{prefix}_{tag}"]) for r in rows]
            assert [s for s, _ in logged] == [s for s, _ in expected]
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6)
    main = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    main.Reload()
    assert "learning_rate" in main.Tags()["scalars"]


def test_tensorboard_waits_for_its_import_and_the_epochs_do_not(tmp_path):
    """Epochs that end while tensorboardX is still being imported are written once it is."""
    import concurrent.futures

    from fmnist_jax.reports import board as board_module

    imported = concurrent.futures.Future()
    board = RunReports(str(tmp_path), primary=True, imported=imported)
    for epoch in (1, 2):
        board.epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
    assert not (tmp_path / "tensorboard").exists()
    imported.set_result(board_module)
    board.epoch({"epoch": 3, "train_loss": 1.0 / 3})
    board.board().finish({}, {"test_loss": 0.5, "test_accuracy": 0.8, "epochs_run": 3}, {})
    files = (tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*")
    events = [e for f in files for e in _events(f)]
    losses = {
        e.step: v.simple_value for e in events for v in e.summary.value if v.tag == "epoch_loss"
    }
    assert losses == pytest.approx({1: 1.0, 2: 0.5, 3: 1.0 / 3})


def test_the_log_counts_one_step_in_the_singular(tiny_config, tmp_path, caplog):
    tiny_config.data.num_train, tiny_config.num_epochs = tiny_config.batch_size, 1
    with caplog.at_level("INFO"):
        _train(tiny_config, tmp_path)
    assert "; 1 step per epoch, 1 step per call; compiled in" in caplog.text
    assert "(1 epoch, " in caplog.text


def test_run_writes_plots_and_tensorboard_events(tiny_config, tmp_path, caplog):
    from PIL import Image

    tiny_config.plots = True
    with caplog.at_level("INFO"):
        _train(tiny_config, tmp_path)
    assert f"Figures in {tmp_path / 'plots'}; tensorboard" in caplog.text
    names = {
        "learning_curves",
        "confusion_matrix",
        "per_class_accuracy",
        "confident_mistakes",
        "training_images",
    }
    for name in names:
        with Image.open(tmp_path / "plots" / f"{name}.png") as image:
            image.verify()
            assert image.size[0] > 200
    files = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    events = [e for f in files for e in _events(f)]
    values = {(v.tag, e.step): v for e in events for v in e.summary.value}
    tags = {tag for tag, _ in values}
    assert {
        "epoch_loss",
        "epoch_accuracy",
        "learning_rate",
        "test/accuracy",
        "test/sample_predictions",
    } <= tags
    assert not {"train/loss", "val/loss"} & tags  # Keras' layout instead, below
    assert values[("test/sample_predictions", 2)].image.encoded_image_string.startswith(b"\x89PNG")
    assert any(v.tag.startswith("_hparams_") for e in events for v in e.summary.value)


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_metrics(tiny_config, tmp_path):
    tiny_config.model.dropout_rate = 0.2
    _train(tiny_config, tmp_path / "a")
    _train(tiny_config, tmp_path / "b")
    assert _without_timings(_rows(tmp_path / "a")) == _without_timings(_rows(tmp_path / "b"))


@pytest.mark.slow
def test_profile_writes_a_trace_and_leaves_training_unchanged(tiny_config, tmp_path):
    _train(tiny_config, tmp_path / "plain")
    tiny_config.profile = True
    _train(tiny_config, tmp_path / "profiled")
    traces = list((tmp_path / "profiled" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    assert _without_timings(_rows(tmp_path / "plain")) == _without_timings(
        _rows(tmp_path / "profiled")
    )


@pytest.mark.slow
def test_three_seeds_in_one_program_equal_three_single_runs(tiny_config, tmp_path):
    tiny_config.model.dropout_rate = 0.2
    tiny_config.seed, tiny_config.num_seeds = 5, 3
    together = _train(tiny_config, tmp_path / "together")
    rows = _rows(tmp_path / "together")
    assert together["test_accuracy"] == pytest.approx(np.mean(together["test_accuracy_seeds"]))
    assert together["test_accuracy_std"] == pytest.approx(np.std(together["test_accuracy_seeds"]))
    tiny_config.num_seeds = 1
    for k in range(3):
        tiny_config.seed = 5 + k
        single = _train(tiny_config, tmp_path / f"seed{k}")
        single_rows = _rows(tmp_path / f"seed{k}")
        for key in ("train_loss", "val_loss", "val_accuracy"):
            np.testing.assert_allclose(
                [r[f"{key}_seeds"][k] for r in rows],
                [r[key] for r in single_rows],
                **tolerance(1e-5),
            )
        np.testing.assert_allclose(
            together["test_loss_seeds"][k], single["test_loss"], **tolerance(1e-5)
        )
        assert together["test_accuracy_seeds"][k] == single["test_accuracy"]
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(  # inference restores the first seed
        inference.load(str(tmp_path / "together")).predict_proba(images),
        inference.load(str(tmp_path / "seed0")).predict_proba(images),
        **tolerance(1e-5),
    )


def test_finished_run_is_reported_not_retrained_and_other_configs_are_refused(
    tiny_config, tmp_path
):
    first = _train(tiny_config, tmp_path)
    metrics_before = (tmp_path / "metrics.jsonl").read_text()
    assert _train(tiny_config, tmp_path) == first
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before
    tiny_config.optimizer.learning_rate = 0.05
    with pytest.raises(
        UserError, match="different config \\(optimizer.learning_rate: 0.001 there, 0.05 now\\)"
    ):
        _train(tiny_config, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics_before


def _results(summary):
    return {
        k: v for k, v in summary.items() if k.startswith(("test_", "val_")) or k == "epochs_run"
    }


@pytest.mark.slow
def test_more_epochs_train_a_finished_run_on_to_what_a_longer_run_gives(tiny_config, tmp_path):
    tiny_config.schedule.name = "exponential"  # a rate that moves with the epoch
    tiny_config.schedule.decay_rate = 0.5
    tiny_config.model.dropout_rate = 0.2  # keys of every step
    first = _train(tiny_config, tmp_path / "on")
    tiny_config.num_epochs = 3
    on = _train(tiny_config, tmp_path / "on")
    straight = _train(tiny_config, tmp_path / "straight")
    assert _results(on) == _results(straight) and on["epochs_run"] == 3
    assert _without_timings(_rows(tmp_path / "on")) == _without_timings(
        _rows(tmp_path / "straight")
    )
    kept = json.loads((tmp_path / "on" / "summary_2_epochs.json").read_text())
    assert _results(kept) == _results(first)
    for hparams in ("hparams", "hparams_2_epochs"):  # one TensorBoard session each
        assert len(list((tmp_path / "on" / "tensorboard" / hparams).iterdir())) == 1
    assert _train(tiny_config, tmp_path / "on") == on  # finished at 3: reported, not retrained

    tiny_config.num_epochs = 2
    with pytest.raises(UserError, match="num_epochs: 3 there, 2 now\\). num_epochs may grow"):
        _train(tiny_config, tmp_path / "on")
    assert json.loads((tmp_path / "on" / "config.json").read_text())["num_epochs"] == 3
    cosine = workdir_lib.config_as_json(tiny_config)
    cosine["schedule"]["name"] = "cosine"
    differences = workdir_lib.config_differences(cosine, {**cosine, "num_epochs": 3})
    assert differences == ["num_epochs: 2 there, 3 now"]
    with pytest.raises(UserError, match="nor grow under a cosine schedule"):
        workdir_lib.refuse_other_config("W", differences)


def _stop_early(config, num_epochs):
    config.num_epochs = num_epochs
    config.early_stopping.enabled = True
    config.early_stopping.monitor = "val_loss"
    config.early_stopping.patience = 2
    config.optimizer.learning_rate = 0.05  # mock labels are noise: validation loss soon rises


@pytest.mark.slow
@pytest.mark.parametrize("restore_best", [True, False])
def test_reported_validation_is_read_from_its_epochs_row_bit_for_bit(
    tiny_config, tmp_path, monkeypatch, restore_best
):
    _stop_early(tiny_config, 12)
    tiny_config.num_seeds = 3  # runs that stop, and report, at different epochs
    tiny_config.early_stopping.restore_best = restore_best
    read = train.train_and_evaluate(tiny_config, str(tmp_path / "read"))
    monkeypatch.setattr(
        loop_state,
        "_reported_val",
        lambda program, loop, weights, epochs: program.evaluate(weights, "val").per_run(),
    )
    evaluated = train.train_and_evaluate(tiny_config, str(tmp_path / "evaluated"))
    assert len(set(read["restored_epoch_seeds"])) > 1
    for key in ("val_loss_seeds", "val_accuracy_seeds"):
        assert read[key] == evaluated[key]


@pytest.mark.slow
def test_early_stopping_stops_and_restores_the_best_epoch(tiny_config, tmp_path):
    _stop_early(tiny_config, 30)
    summary = _train(tiny_config, tmp_path)
    rows = _rows(tmp_path)
    best = min(rows, key=lambda r: r["val_loss"])
    assert summary["epochs_run"] == len(rows) < 30
    assert summary["restored_epoch"] == best["epoch"] == len(rows) - 2
    assert summary["val_loss"] == best["val_loss"]  # its row's, the same weights
    tiny_config.num_epochs = 40
    with pytest.raises(UserError, match=f"ended by early stopping after epoch {len(rows)} of 30"):
        _train(tiny_config, tmp_path)
    assert (tmp_path / "summary.json").exists()


def test_divergence_stops_at_once_naming_epoch_and_step(tiny_config, tmp_path):
    tiny_config.optimizer.name = "sgd"
    tiny_config.optimizer.learning_rate = 1e30
    with pytest.raises(UserError, match="NaN or infinite at epoch 1, step [1-4] of 4") as info:
        _train(tiny_config, tmp_path)
    assert "learning_rate" in str(info.value)
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_real_data_mlp_one_epoch_through_the_cli_without_tensorflow(
    prepared_tfds_dir, tmp_path, without_tensorflow
):
    """The real Fashion-MNIST, the real command, where TensorFlow is not installed: 1 epoch of the seed
    MLP reaches >= 0.80 test accuracy, and stderr holds the log and nothing that looks like trouble."""
    workdir = tmp_path / "mlp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist_jax.main",
            "--config=configs/mlp.py",
            f"--workdir={workdir}",
            "--config.num_epochs=1",
            f"--config.data.tfds_data_dir={prepared_tfds_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=without_tensorflow,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Total Parameters: 101,770" in result.stderr
    assert noise(result.stderr) == []
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.80
    assert summary["epochs_run"] == 1 and len(_rows(workdir)) == 1
    assert 0.80 <= summary["best_val_accuracy"] <= 1.0


@pytest.mark.slow
def test_early_stopping_per_seed_equals_single_runs(tiny_config, tmp_path):
    _stop_early(tiny_config, 12)
    tiny_config.num_seeds = 2
    together = _train(tiny_config, tmp_path / "together")
    tiny_config.num_seeds = 1
    singles = []
    for k in range(2):
        tiny_config.seed = k
        singles.append(_train(tiny_config, tmp_path / f"seed{k}"))
    assert together["restored_epoch_seeds"] == [s["restored_epoch"] for s in singles]
    assert together["epochs_run"] == max(s["epochs_run"] for s in singles)
    np.testing.assert_allclose(
        together["test_loss_seeds"], [s["test_loss"] for s in singles], **tolerance(1e-5)
    )


@pytest.mark.slow
def test_ema_and_flip_tta_reach_checkpoints_and_inference(tiny_config, tmp_path):
    tiny_config.ema_decay, tiny_config.test_time_flip = 0.9, True
    summary = _train(tiny_config, tmp_path)
    classifier = inference.load(str(tmp_path))
    assert jax.tree.structure(classifier.variables["ema_params"]) == jax.tree.structure(
        classifier.variables["params"]
    )
    splits = data.load(tiny_config.data)
    probabilities = classifier.predict_proba(splits.test_images)
    assert (probabilities.argmax(-1) == splits.test_labels).mean() == pytest.approx(
        summary["test_accuracy"]
    )
    raw = inference.Classifier(
        classifier.config, classifier.class_names, 0, {**classifier.variables, "ema_params": {}}
    )
    assert not np.allclose(raw.predict_proba(splits.test_images), probabilities, rtol=1e-3)


@pytest.mark.slow
def test_strong_configs_train_end_to_end_when_shrunk(tiny_config, tmp_path):
    """configs/fast.py and configs/resnet.py (batch norm, augmentation, EMA, flip TTA) through the
    whole loop on mock data, with their networks narrowed so the test stays fast."""
    from configs import fast, resnet

    for name, module, narrow in (
        ("fast", fast, {"conv_channels": (4, 8), "hidden_sizes": (8,)}),
        ("resnet", resnet, {"stage_channels": (4, 8), "stem_channels": 4, "blocks_per_stage": 1}),
    ):
        config = module.get_config()
        config.update(
            {k: tiny_config[k] for k in ("num_epochs", "batch_size", "eval_batch_size", "plots")}
        )
        config.data.num_validation, config.data.tfds_data_dir = 16, tiny_config.data.tfds_data_dir
        config.model.update(narrow)
        summary = _train(config, tmp_path / name)
        rows = _rows(tmp_path / name)
        assert [r["epoch"] for r in rows] == [1, 2] and np.isfinite(summary["test_loss"])
        assert inference.load(str(tmp_path / name)).variables["batch_stats"]
