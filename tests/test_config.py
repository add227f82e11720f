"""Configs, command-line overrides and bad values: each a clear error."""

import importlib
import pathlib
import subprocess
import sys

import pytest

from configs import cnn as cnn_config
from configs import mlp as mlp_config
from fmnist_jax import config as config_lib
from fmnist_jax import models
from fmnist_jax.config import checks as config_checks
from fmnist_jax.errors import UserError
from fmnist_jax.tuning import search


def test_seed_configs_are_valid_and_match_their_recipes():
    mlp = mlp_config.get_config()
    config_checks.validate(mlp)
    assert (
        mlp.model.name,
        mlp.model.hidden_sizes,
        mlp.optimizer.name,
        mlp.optimizer.learning_rate,
    ) == ("mlp", (128,), "adam", 1e-3)
    assert (mlp.batch_size, mlp.num_epochs, mlp.data.num_validation) == (32, 10, 5000)
    cnn = cnn_config.get_config()
    config_checks.validate(cnn)
    assert (cnn.model.name, cnn.model.conv_channels, cnn.batch_size) == ("cnn", (32, 64), 64)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optimizer.learning_rate", 0.0, "optimizer.learning_rate must be a positive number"),
        ("optimizer.learning_rate", -1e-3, "optimizer.learning_rate must be a positive number"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("batch_size", 55_001, "batch_size=55001 is larger than the training split"),
        ("data.num_validation", 60_000, "data.num_validation must be in \\[0, 59999\\]"),
        ("data.num_train", 55_001, "data.num_train must be in \\[0, 55000\\]"),
        ("data.num_train", -1, "data.num_train must be in \\[0, 55000\\]"),
        ("optimizer.name", "adamax", "Unknown optimizer.name='adamax'; choose one of sgd, adam"),
        ("schedule.name", "linear", "Unknown schedule.name='linear'"),
        ("early_stopping.monitor", "accuracy", "Unknown early_stopping.monitor"),
        ("loss.label_smoothing", 1.0, "loss.label_smoothing must be in \\[0, 1\\)"),
        ("augment.crop_padding", 20, "augment.crop_padding must be in \\[0, 14\\] pixels, got 20"),
        ("augment.erasing", 1.5, "augment.erasing must be a probability in \\[0, 1\\], got 1.5"),
        ("num_seeds", 0, "num_seeds must be a positive integer, got 0"),
        ("eval_batch_size", -1, "eval_batch_size must be an integer >= 0 \\(0 = automatic\\)"),
        ("model.dropout_rate", 1.5, "model.dropout_rate must be in \\[0, 1\\)"),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(key, value, message):
    config = mlp_config.get_config()
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(UserError, match=message):
        config_checks.validate(config)


@pytest.mark.parametrize(
    "section, name, message",
    [
        ("", "num_epoch", "config.num_epoch is not a setting.*did you mean num_epochs\\?"),
        ("optimizer", "learnig_rate", "did you mean optimizer.learning_rate\\?"),
        ("", "colour", "config.colour is not a setting, so nothing would read it\\. Every key"),
    ],
)
def test_a_key_python_code_added_by_mistake_is_refused(section, name, message):
    config = mlp_config.get_config()  # unlocked, as in a notebook: a typo adds a key
    setattr(config[section] if section else config, name, 5)
    with pytest.raises(UserError, match=message):
        config_checks.validate(config)


def test_early_stopping_needs_a_validation_split():
    config = mlp_config.get_config()
    config.early_stopping.enabled = True
    config.data.num_validation = 0
    with pytest.raises(UserError, match="needs a validation split"):
        config_checks.validate(config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            "optimizer.momentum=0.9",
            "momentum does nothing with optimizer.name='adam' \\(only with 'sgd' or 'rmsprop'\\)",
        ),
        ("schedule.warmup_epochs=1", "schedule.warmup_epochs does nothing with schedule.name="),
        ("schedule.name=piecewise;schedule.decay_rate=0.5", "schedule.decay_rate does nothing"),
        ("optimizer.name=adamw", "optimizer.weight_decay=0 is Adam"),
        (
            "schedule.name=cosine;schedule.warmup_epochs=10",
            "warmup_epochs must be in \\[0, num_epochs",
        ),
        ("grid=(('schedule.end_factor', (0.0, 0.1)),)", "schedule.end_factor does nothing with"),
        ("early_stopping.patience=5", "does nothing with early_stopping.enabled=False"),
    ],
)
def test_settings_the_chosen_optimizer_or_schedule_would_not_read_are_refused(overrides, message):
    """Keras refuses momentum for Adam; here such a setting would train as if it were not there."""
    config = mlp_config.get_config()
    config_lib.apply_overrides(config, overrides)
    with pytest.raises(UserError, match=message):
        config_checks.validate(config)


def test_a_sweep_may_compare_adamw_without_weight_decay_and_read_keys_may_change():
    config = mlp_config.get_config()
    config_lib.apply_overrides(
        config, "optimizer.name=adamw;grid=(('optimizer.weight_decay', (0.0, 1e-4)),)"
    )
    config_checks.validate(config)  # a member without weight decay is the sweep's baseline
    config_lib.apply_overrides(
        config, "optimizer.name=sgd;optimizer.momentum=0.9;optimizer.nesterov=True;grid=()"
    )
    config_checks.validate(config)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", "--config=configs/mlp.py", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.optimizer.lerning_rate=0.1", "lerning_rate"),  # unknown key
        ("--config.batch_size=lots", "batch_size"),  # wrong type
        (
            "--config.optimizer.learning_rate=-1",
            "optimizer.learning_rate must be a positive number",
        ),
        ("--config.model.name=transformer", "Unknown model.name='transformer'"),
        ("--config.model.name=resnet", "model.name='resnet' has no setting hidden_sizes"),
    ],
)
@pytest.mark.slow
def test_cli_rejects_bad_overrides_in_one_line(override, message, tmp_path):
    result = _cli(f"--workdir={tmp_path}/run", override)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # said once: no log line repeating it, no traceback
    assert lines[0].startswith("error: ") and message in lines[0]
    # Refused before the workdir exists: no config.json there to refuse the corrected config.
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_rejects_stray_arguments_and_unknown_flags_in_one_line(tmp_path):
    stray = _cli(f"--workdir={tmp_path}/run", "num_epochs=3")
    assert stray.returncode != 0 and "unexpected arguments num_epochs=3" in stray.stderr
    assert not (tmp_path / "run").exists()
    unknown = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.evaluate", "--workdir=x", "--wich=best"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert unknown.returncode != 0 and "Unknown command line flag 'wich'" in unknown.stderr
    no_config = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", f"--workdir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert no_config.returncode == 1 and no_config.stderr.startswith(
        "error: No config given. Pass --config=configs/mlp.py"
    )
    assert "Traceback" not in stray.stderr + unknown.stderr + no_config.stderr


@pytest.mark.slow
def test_cli_rejects_an_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _cli(f"--workdir={blocker}/run")
    assert result.returncode != 0
    assert "Cannot write to workdir" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "name",
    sorted(
        p.stem
        for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
        if p.stem != "__init__"
    ),
)
def test_every_config_is_valid_and_its_docstring_says_how_to_run_it(name):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    config_checks.validate(config)
    models.create(config.model)
    command = "experiments.search" if config.search.space else "fmnist_jax.main"
    assert f"python -m {command} --config=configs/{name}.py" in module.__doc__
    if config.search.space:
        search.check(config)


def test_key_value_overrides_set_known_keys_and_refuse_others_clearly():
    config = config_lib.default()
    config.lock()
    config_lib.apply_overrides(
        config, "num_epochs=3;model.hidden_sizes=(256, 128);optimizer.name=sgd"
    )
    assert (config.num_epochs, config.model.hidden_sizes, config.optimizer.name) == (
        3,
        (256, 128),
        "sgd",
    )
    for overrides, message in (
        ("model.widht=3", "'model.widht' is not a key"),
        ("num_epochs.x=3", "'num_epochs.x' is not a key"),
        ("num_epochs", "is not key=value"),
        ("num_epochs=many", "num_epochs=many"),
    ):
        with pytest.raises(UserError, match=message):
            config_lib.apply_overrides(config, overrides)
