"""Keras' ReduceLROnPlateau (`config.reduce_lr`): the rule, and runs that follow it."""

import json

import pytest

from fmnist_jax import config as config_lib
from fmnist_jax.config import checks as config_checks
from fmnist_jax.errors import UserError
from fmnist_jax.training import reduce_lr, train


def _config(**settings):
    config = config_lib.default()
    config.reduce_lr.enabled = True
    config.reduce_lr.update(settings)
    return config


def _rates(config, losses, initial=(1.0,)):
    """Each epoch's rates: the rule applied to the history before it."""
    history = [{"val_loss_seeds": list(epoch)} for epoch in losses]
    return [reduce_lr.learning_rates(history[:e], config, initial) for e in range(len(losses) + 1)]


def test_the_rate_drops_after_patience_epochs_without_improvement_as_in_keras():
    config = _config(factor=0.5, patience=2, min_delta=0.01)
    # 1.0 best; 0.995 is within min_delta (no improvement); 0.98 improves; then a plateau
    losses = [(1.0,), (0.995,), (0.98,), (0.99,), (0.985,), (0.97,), (0.99,), (0.99,)]
    assert _rates(config, losses) == [
        [1.0],
        [1.0],
        [1.0],
        [1.0],
        [1.0],
        [0.5],
        [0.5],
        [0.5],
        [0.25],
    ]


def test_cooldown_waits_min_lr_floors_and_each_run_follows_its_own_history():
    config = _config(factor=0.1, patience=1, cooldown=2, min_lr=0.003, min_delta=0.0)
    flat, falling = 1.0, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    losses = [(flat, loss) for loss in falling]
    rates = _rates(config, losses, initial=(1.0, 1.0))
    # run 0: a drop after 1 epoch without improvement; cooldown=2 then skips one epoch, as in
    # Keras (its counter runs out in the epoch that counts again); the third drop stops at min_lr
    assert [r[0] for r in rates] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.003, 0.003])
    assert [r[1] for r in rates] == [1.0] * 8  # always improving
    floored = _config(factor=0.1, patience=1, min_lr=0.003)
    assert _rates(floored, [(1.0,)] * 5)[-1] == [0.003]


def test_accuracy_is_monitored_upwards():
    config = _config(monitor="val_accuracy", factor=0.5, patience=1, min_delta=0.0)
    history = [{"val_accuracy_seeds": [a]} for a in (0.5, 0.6, 0.6, 0.7)]
    assert reduce_lr.learning_rates(history[:3], config, [1.0]) == [0.5]
    assert reduce_lr.learning_rates(history, config, [1.0]) == [0.5]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"factor": 1.0}, "reduce_lr.factor must be in \\(0, 1\\), got 1.0"),
        ({"patience": 0}, "reduce_lr.patience must be an integer >= 1, got 0"),
        ({"cooldown": -1}, "reduce_lr.cooldown must be an integer >= 0"),
        ({"min_lr": -1.0}, "reduce_lr.min_lr must be >= 0"),
        ({"monitor": "loss"}, "Unknown reduce_lr.monitor='loss'"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        config_checks.validate(_config(**settings))


def test_it_needs_a_constant_schedule_a_validation_split_and_to_be_on():
    cosine = _config()
    cosine.schedule.name = "cosine"
    with pytest.raises(UserError, match="schedule.name='cosine' already changes it every step"):
        config_checks.validate(cosine)
    no_val = _config()
    no_val.data.num_validation = 0
    with pytest.raises(UserError, match="reduce_lr.enabled needs a validation split"):
        config_checks.validate(no_val)
    off = config_lib.default()
    off.reduce_lr.patience = 3
    with pytest.raises(UserError, match="reduce_lr.patience"):
        config_checks.validate(off)


def _rows(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in ("epoch_seconds", "examples_per_second")}
        for r in rows
    ]


def test_a_run_trains_at_the_reduced_rates_and_trains_on_to_what_a_longer_run_gives(
    tiny_config, tmp_path, caplog
):
    tiny_config.num_seeds = 2
    constant = train.train_and_evaluate(tiny_config, str(tmp_path / "constant"))
    tiny_config.reduce_lr.update(enabled=True, patience=1, min_delta=10.0)  # only epoch 1 improves
    train.train_and_evaluate(tiny_config, str(tmp_path / "on"))
    rates = [rate for r in _rows(tmp_path / "on") for rate in r["learning_rate_seeds"]]
    assert rates == pytest.approx([1e-3] * 4)
    tiny_config.num_epochs = 4
    with caplog.at_level("INFO"):
        on = train.train_and_evaluate(tiny_config, str(tmp_path / "on"))
    assert (
        "Epoch 3 (seed 1): learning rate 0.001 -> 0.0001, as val_loss has not improved by more "
        "than 10 for 1 epoch (reduce_lr)."
    ) in caplog.text
    rows = _rows(tmp_path / "on")
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5])
    straight = train.train_and_evaluate(tiny_config, str(tmp_path / "straight"))
    assert rows == _rows(tmp_path / "straight")  # the rates follow from the metrics kept
    assert on["test_loss_seeds"] == straight["test_loss_seeds"]
    # the first two epochs are the constant rate's, bit for bit: the rate only multiplies
    rates = ("learning_rate", "learning_rate_seeds")
    assert [{k: v for k, v in r.items() if k not in rates} for r in rows[:2]] == [
        {k: v for k, v in r.items() if k not in rates} for r in _rows(tmp_path / "constant")
    ]
    assert on["test_loss_seeds"] != constant["test_loss_seeds"]
