"""Sweeps: a grid x seeds in one program equals its members trained one by one; refusals; NaN members."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_cli_args

from fmnist_jax import config as config_lib
from fmnist_jax import data, inference
from fmnist_jax.config import checks as config_checks
from fmnist_jax.config import run_axis
from fmnist_jax.engine import memory as memory_lib
from fmnist_jax.engine import program
from fmnist_jax.errors import UserError
from fmnist_jax.training import train
from fmnist_jax.tuning import sweep


def _rows(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _assert_member_equals_single_run(config, workdir, result, member, seed, single_dir):
    """Run (member, seed) of the sweep in `workdir` against a run of its own with those values."""
    values = run_axis.members(config)[member]
    single_config = config_lib.with_values(config, values)
    single_config.seed, single_config.num_seeds = config.seed + seed, 1
    single = train.train_and_evaluate(single_config, str(single_dir))
    run = member * config.num_seeds + seed
    swept, alone = _rows(workdir), _rows(single_dir)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert [r[f"{key}_seeds"][run] for r in swept] == pytest.approx(
            [r[key] for r in alone], rel=2e-5
        ), key
    m = result["members"][member]
    assert m["test_loss_seeds"][seed] == pytest.approx(single["test_loss"], rel=2e-5)
    assert m["test_accuracy_seeds"][seed] == pytest.approx(single["test_accuracy"], abs=1 / 48)
    return single


@pytest.mark.parametrize(
    "optimizer, grid, checked",
    [
        # The example: learning rate x dropout (x seeds).
        (
            "adam",
            (("optimizer.learning_rate", (1e-3, 5e-3)), ("model.dropout_rate", (0.0, 0.3))),
            [(1, 1), (2, 0)],
        ),
        # Every other part a value of 0 turns off, swept on and off in one program.
        (
            "sgd",
            (
                ("optimizer.momentum", (0.0, 0.9)),
                ("optimizer.grad_clip_norm", (0.0, 0.5)),
                ("loss.label_smoothing", (0.0, 0.1)),
                ("ema_decay", (0.0, 0.9)),
                ("augment.erasing", (0.0, 0.5)),
            ),
            [(0, 0), (31, 1)],
        ),
    ],
)
def test_sweep_members_equal_single_runs(tiny_config, tmp_path, optimizer, grid, checked):
    tiny_config.optimizer.name = optimizer
    if optimizer == "sgd":
        tiny_config.optimizer.learning_rate = 0.05
    tiny_config.grid, tiny_config.num_seeds, tiny_config.seed = grid, 2, 3
    tiny_config.plots = optimizer == "adam"  # and the sgd sweep draws no figure
    result = sweep.train(tiny_config, str(tmp_path / "sweep"))
    assert len(result["members"]) == 2 ** len(grid) and result["seeds"] == [3, 4]
    for member, seed in checked:
        _assert_member_equals_single_run(
            tiny_config, tmp_path / "sweep", result, member, seed, tmp_path / f"m{member}s{seed}"
        )
    # Chosen on validation, never on test; the default restore is that member's first seed.
    means = [np.mean(m["val_accuracy_seeds"]) for m in result["members"]]
    assert result["best"] == int(np.argmax(means)) and result["best_run"] == 2 * result["best"]
    classifier = inference.load(str(tmp_path / "sweep"))
    best_values = result["members"][result["best"]]["hparams"]
    assert all(
        classifier.config[k.split(".")[0]][k.split(".")[1]] == pytest.approx(v)
        if "." in k
        else classifier.config[k] == pytest.approx(v)
        for k, v in best_values.items()
    )
    assert (tmp_path / "sweep" / "sweep.md").read_text().count("\n") == 2 + len(result["members"])
    figure = tmp_path / "sweep" / "sweep.png"
    assert figure.stat().st_size > 10_000 if tiny_config.plots else not figure.exists()
    assert len(list((tmp_path / "sweep" / "tensorboard" / "members").iterdir())) == len(
        result["members"]
    )


def test_a_diverging_member_stops_only_itself_and_is_named(tiny_config, tmp_path, caplog):
    tiny_config.optimizer.name = "sgd"
    tiny_config.grid = (("optimizer.learning_rate", (0.05, 1e30)),)
    result = sweep.train(tiny_config, str(tmp_path / "sweep"))
    healthy, diverged = result["members"]
    assert diverged["diverged"] == [{"seed": 0, "epoch": 1}] and diverged["test_accuracy"] is None
    assert not healthy["diverged"] and result["best"] == 0
    assert "Training diverged (learning_rate=1e+30, seed 0)" in caplog.text
    assert "diverged (seed 0, epoch 1)" in sweep.table(result)
    tiny_config.grid, tiny_config.optimizer.learning_rate = (), 0.05
    single = train.train_and_evaluate(tiny_config, str(tmp_path / "single"))
    assert healthy["test_loss"] == pytest.approx(single["test_loss"], rel=2e-5)


def _sweep_command(tfds_dir, workdir, *grid):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            *tiny_cli_args(tfds_dir, 1),
            f"--workdir={workdir}",
            *grid,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "grid, message",
    [
        (("--grid=model.hidden_sizes=64,128",), "model.hidden_sizes cannot be swept"),
        (("--grid=optimizer.momentum=0,0.9",), "optimizer.momentum does nothing with"),
        (("--grid=optimizer.learning_rate=1e-3,-1",), "optimizer.learning_rate must be a positive"),
        (("--grid=optimizer.learning_rate=fast",), "is not key=value,value"),
        ((), "This sweep has no grid"),
    ],
)
def test_what_cannot_be_swept_is_refused_in_one_paragraph(mock_tfds_dir, tmp_path, grid, message):
    result = _sweep_command(mock_tfds_dir, tmp_path, *grid)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    if "hidden_sizes" in message:
        assert "experiments.compare" in errors[0]
    assert not list(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.slow
def test_the_sweep_command_prints_what_it_wrote(mock_tfds_dir, tmp_path):
    """One seed: the table shows values without a spread (a std of 0 over one seed claims a
    precision), and with plots off the last line names no figure."""
    result = _sweep_command(mock_tfds_dir, tmp_path, "--grid=optimizer.learning_rate=1e-3,3e-3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 members x 1 seed(s) in one program" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 0.00")]
    assert len(rows) == 2 and "±" not in result.stdout
    assert "mean of 2 sweep runs, std" in result.stderr
    assert not (tmp_path / "sweep.png").exists() and "sweep.png" not in result.stdout
    assert result.stdout.rstrip().endswith(f"Reports: tensorboard --logdir={tmp_path}")


def test_grid_validation_needs_a_validation_split(tiny_config):
    tiny_config.grid, tiny_config.data.num_validation = (("optimizer.learning_rate", (1e-3,)),), 0
    with pytest.raises(UserError, match="chooses its best member on the validation split"):
        config_checks.validate(tiny_config)


def test_memory_check_says_how_many_members_fit():
    need = memory_lib.Memory(needed=100 + 4 * 10, shared=100, num_runs=4, available=125)
    assert need.per_run == 10 and need.runs_that_fit() == 2
    with pytest.raises(UserError, match="at most 1 member\\(s\\) fit"):
        need.check(num_seeds=2)
    memory_lib.Memory(needed=140, shared=100, num_runs=4, available=None).check(num_seeds=1)


def test_a_sweep_too_large_for_the_device_fails_before_training(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(memory_lib, "available", lambda device: 1024)
    tiny_config.grid = (("optimizer.learning_rate", (1e-3, 3e-3)),)
    with pytest.raises(UserError, match="does not fit the device.*at most 0 member"):
        sweep.train(tiny_config, str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


def test_early_stopping_stops_each_member_as_its_single_run(tiny_config, tmp_path):
    tiny_config.num_epochs = 12
    tiny_config.early_stopping.enabled = True
    tiny_config.early_stopping.monitor = "val_loss"
    tiny_config.early_stopping.patience = 2
    tiny_config.grid = (("optimizer.learning_rate", (0.05, 0.01)),)
    result = sweep.train(tiny_config, str(tmp_path / "sweep"))
    assert len(result["epochs"]) < 12  # both stopped early (mock labels are noise)
    for member in result["members"]:
        single_config = config_lib.with_values(tiny_config, member["hparams"])
        single = train.train_and_evaluate(single_config, str(tmp_path / member["name"]))
        assert member["epochs_seeds"] == [single["restored_epoch"]]
        assert member["test_loss"] == pytest.approx(single["test_loss"], rel=2e-5)


def test_the_learning_rate_rides_the_run_axis_with_the_bits_of_a_constant(tiny_config):
    """Even without a grid the learning rate is an argument of the training program: runs that
    differ only in it share one compiled program, and it trains exactly as the constant did."""

    def training_program(**optimizer):
        config = tiny_config.copy_and_resolve_references()
        config.optimizer.update(optimizer)
        return program.lower_for(config, "cpu")["train"].as_text()

    assert training_program(learning_rate=3e-3) == training_program(learning_rate=1e-4)
    assert training_program(b1=0.8) != training_program(b1=0.9)  # a constant does show

    built = program.build(tiny_config, data.random_splits(64, 16))
    assert list(built.runner.values) == ["optimizer.learning_rate"]
    np.testing.assert_array_equal(
        built.runner.values["optimizer.learning_rate"], [np.float32(1e-3)]
    )
    constant = dataclasses.replace(built.runner, values={})  # the config's number, built in
    state, _ = built.compile()
    as_argument, _ = built.runner.train_epoch(jax.tree.map(np.array, state), 0)
    as_constant, _ = constant.train_epoch(jax.tree.map(np.array, state), 0)
    jax.tree.map(np.testing.assert_array_equal, as_argument.params, as_constant.params)
    jax.tree.map(np.testing.assert_array_equal, as_argument.opt_state, as_constant.opt_state)
