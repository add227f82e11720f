"""The checks that turn a config that cannot work into one clear `UserError`.

`validate(config)` checks every section's values, a sweep's grid and each of its members, keys
that nothing would read (a setting the chosen optimizer ignores, a key added by mistake), and
names the first problem with the values that would work. Nothing is written before it passes.
"""

from __future__ import annotations

import difflib
import math

from ml_collections import ConfigDict

from fmnist_jax.config import (
    DTYPES,
    MONITORS,
    NUM_TRAIN_EXAMPLES,
    READ_ONLY_BY,
    SCHEDULES,
    SWEEPABLE,
    default,
    flatten,
    num_train_examples,
    run_axis,
    with_values,
)
from fmnist_jax.config.optimizers import OPTIMIZERS, read_only_by
from fmnist_jax.errors import UserError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"Unknown {key}={value!r}; choose one of {', '.join(choices)}.")


def _check_positive(key: str, value: float) -> None:
    _check(math.isfinite(value) and value > 0, f"{key} must be a positive number, got {value!r}.")


def _check_fraction(key: str, value: float) -> None:
    _check(0.0 <= value < 1.0, f"{key} must be in [0, 1), got {value!r}.")


def _check_grid(config: ConfigDict) -> None:
    """Each grid entry is (a sweepable key this config reads, its values), or (such keys, rows of
    their values), and each value valid."""
    grid = config.grid
    _check(
        config.data.num_validation > 0,
        "A sweep (grid) chooses its best member on the validation split: set data.num_validation > 0.",
    )
    _check(
        isinstance(grid, (tuple, list))
        and all(isinstance(e, (tuple, list)) and len(e) == 2 for e in grid),
        f"grid must be a tuple of (key, (value, ...)) pairs, got {grid!r}.",
    )
    keys = [k for key, _ in grid for k in (key if isinstance(key, (tuple, list)) else (key,))]
    _check(len(set(keys)) == len(keys), f"grid names a key twice: {keys}.")
    for key, values in grid:
        names = tuple(key) if isinstance(key, (tuple, list)) else (key,)
        for name in names:
            _check_sweepable(config, name)
        rows = values if isinstance(key, (tuple, list)) else [(v,) for v in values]
        _check(
            isinstance(values, (tuple, list))
            and len(values) > 0
            and all(
                isinstance(row, (tuple, list))
                and len(row) == len(names)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
                for row in rows
            ),
            f"grid values of {key} must be a non-empty tuple of numbers"
            + (f" (rows of {len(names)})" if len(names) > 1 else "")
            + f", got {values!r}.",
        )
        for row in rows:
            _check_values(with_values(config, dict(zip(names, row, strict=True))))


def _check_sweepable(config: ConfigDict, key: str) -> None:
    _check(
        key in SWEEPABLE,
        f"{key} cannot be swept inside one compiled program: only numbers that change no array "
        "shape and no program structure can ride the run axis, and it is not one of them "
        f"(sweepable: {', '.join(SWEEPABLE)}). Compare values of {key} as separate runs with "
        "experiments.compare, e.g. python -m experiments.compare --config=configs/mlp.py "
        f"--variant='a:{key}=...' --variant='b:{key}=...'.",
    )
    if not _read(config, key):
        raise UserError(_does_nothing(config, key, "sweep another key"))


def _read(config: ConfigDict, key: str) -> bool:
    """Whether what the config chose (optimizer, schedule, early stopping) reads `key`."""
    choice_key, readers = _read_only_by().get(key, (None, ()))
    return choice_key is None or config[choice_key] in readers


def _does_nothing(config: ConfigDict, key: str, instead: str) -> str:
    choice_key, readers = _read_only_by()[key]
    return (
        f"{key} does nothing with {choice_key}={config[choice_key]!r} (only with "
        f"{' or '.join(map(repr, readers))}); {instead}, or set {choice_key}."
    )


def _read_only_by() -> dict[str, tuple[str, tuple]]:
    """Every key that only some choices read: the optimizers' table's, and the config's others."""
    return {**read_only_by(), **READ_ONLY_BY}


def _check_read(config: ConfigDict) -> None:
    """Refuses a setting that the chosen optimizer, schedule or early stopping would not read."""
    swept = {key for keys, _ in run_axis.entries(config.grid) for key in keys}  # checked by now
    defaults = default()
    for key in _read_only_by():
        value = config[key]  # ConfigDict reads dotted keys
        if value != defaults[key] and key not in swept and not _read(config, key):
            raise UserError(_does_nothing(config, key, f"remove {key}={value!r}"))
    _check(
        config.optimizer.name != "adamw"
        or config.optimizer.weight_decay > 0
        or "optimizer.weight_decay" in swept,
        "optimizer.name='adamw' with optimizer.weight_decay=0 is Adam: set "
        "optimizer.weight_decay (decoupled; optax's default is 1e-4, Keras' 0.004), or use "
        "optimizer.name='adam'.",
    )
    if config.schedule.name == "cosine":
        _check(
            0 <= config.schedule.warmup_epochs < config.num_epochs,
            f"schedule.warmup_epochs must be in [0, num_epochs={config.num_epochs}): the cosine "
            f"decay follows the warmup, got {config.schedule.warmup_epochs}.",
        )


def validate(config: ConfigDict) -> None:
    """Raises `UserError` naming the first key whose value cannot work, and the values that can, or
    a setting that nothing the config chose would read (`READ_ONLY_BY`)."""
    _check_values(config)
    _check_read(config)


def _check_validation_split(config: ConfigDict, section: str) -> None:
    """`section` (early stopping, reduce_lr) watches a validation metric: there must be one."""
    _check(
        config.data.num_validation > 0,
        f"{section}.enabled needs a validation split: set data.num_validation > 0.",
    )


def _check_reduce_lr(config: ConfigDict) -> None:
    r = config.reduce_lr
    _check_choice("reduce_lr.monitor", r.monitor, MONITORS)
    _check(0 < r.factor < 1, f"reduce_lr.factor must be in (0, 1), got {r.factor}.")
    _check(
        isinstance(r.patience, int) and r.patience >= 1,
        f"reduce_lr.patience must be an integer >= 1, got {r.patience!r}.",
    )
    _check(
        isinstance(r.cooldown, int) and r.cooldown >= 0,
        f"reduce_lr.cooldown must be an integer >= 0, got {r.cooldown!r}.",
    )
    _check(r.min_delta >= 0, f"reduce_lr.min_delta must be >= 0, got {r.min_delta}.")
    _check(r.min_lr >= 0, f"reduce_lr.min_lr must be >= 0, got {r.min_lr}.")
    if r.enabled:
        _check_validation_split(config, "reduce_lr")
        _check(
            config.schedule.name == "constant",
            f"reduce_lr lowers a constant learning rate (as Keras' ReduceLROnPlateau does), but "
            f"schedule.name={config.schedule.name!r} already changes it every step: set "
            "schedule.name='constant', or reduce_lr.enabled=False.",
        )


def _check_known(config: ConfigDict) -> None:
    """Refuses a key that `default()` lacks: Python code may set any attribute of a ConfigDict
    (`config.num_epoch = 5` adds a key), and nothing would read it. The command line cannot add
    keys; `models.check` checks the model's own."""
    known = flatten(default().to_dict())
    unknown = [
        k for k in flatten(config.to_dict()) if k not in known and k.split(".")[0] != "model"
    ]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise UserError(
            f"config.{unknown[0]} is not a setting, so nothing would read it"
            + (f"; did you mean {close[0]}?" if close else ".")
            + " Every key is in fmnist_jax/config/__init__.py's default()."
        )


def _check_values(config: ConfigDict) -> None:
    """Each value's own checks, section by section; a sweep's members too (they differ only in
    swept keys, which `_check_grid` checks are read)."""
    _check_structure(config)
    _check_run(config)
    _check_data(config)
    if config.grid:
        _check_grid(config)
    _check_distributed(config.distributed)
    _check_optimizer(config.optimizer)
    _check_schedule(config.schedule)
    _check_training_extras(config)
    _check_early_stopping(config)
    _check_reduce_lr(config)
    _check_checkpoint(config.checkpoint)
    _check_model_sizes(config.model)


def _check_structure(config: ConfigDict) -> None:
    """A ConfigDict with every key of `default()` and no other."""
    _check(
        isinstance(config, ConfigDict),
        f"A config must be an ml_collections.ConfigDict, got {type(config).__name__}: a config file's get_config() "
        "returns fmnist_jax.config.default() with its changes (see configs/mlp.py).",
    )
    missing = sorted(set(default().keys()) - set(config.keys()))
    _check(
        not missing,
        f"The config lacks {', '.join(missing)}; start config files from fmnist_jax.config.default().",
    )
    _check_known(config)


def _check_run(config: ConfigDict) -> None:
    """The top-level keys: epochs, batch sizes, steps per call, dtype, seeds."""
    for key in ("num_epochs", "batch_size"):
        _check(
            isinstance(config[key], int) and config[key] > 0,
            f"{key} must be a positive integer, got {config[key]!r}.",
        )
    for key in ("eval_batch_size", "steps_per_call"):
        _check(
            isinstance(config[key], int) and config[key] >= 0,
            f"{key} must be an integer >= 0 (0 = automatic), got {config[key]!r}.",
        )
    _check_choice("dtype", config.dtype, DTYPES)
    _check(
        isinstance(config.num_seeds, int) and config.num_seeds >= 1,
        f"num_seeds must be a positive integer, got {config.num_seeds!r}.",
    )


def _check_data(config: ConfigDict) -> None:
    """The splits' sizes, and a batch that fits the training split."""
    _check(
        0 <= config.data.num_validation < NUM_TRAIN_EXAMPLES,
        f"data.num_validation must be in [0, {NUM_TRAIN_EXAMPLES - 1}], got {config.data.num_validation}.",
    )
    available = NUM_TRAIN_EXAMPLES - config.data.num_validation
    _check(
        0 <= config.data.num_train <= available,
        f"data.num_train must be in [0, {available}] (0 = all {available} training examples after "
        f"data.num_validation={config.data.num_validation}), got {config.data.num_train}.",
    )
    _check(
        config.batch_size <= num_train_examples(config),
        f"batch_size={config.batch_size} is larger than the training split "
        f"({num_train_examples(config)} examples after data.num_validation="
        f"{config.data.num_validation}, data.num_train={config.data.num_train}); use a smaller "
        "batch_size.",
    )


def _check_distributed(d: ConfigDict) -> None:
    _check(d.num_processes >= 1, f"distributed.num_processes must be >= 1, got {d.num_processes}.")
    _check(
        0 <= d.process_id < d.num_processes,
        f"distributed.process_id must be in [0, {d.num_processes - 1}] for num_processes={d.num_processes}, got {d.process_id}.",
    )
    _check(
        d.timeout_seconds >= 1,
        f"distributed.timeout_seconds must be >= 1, got {d.timeout_seconds}.",
    )


def _check_optimizer(o: ConfigDict) -> None:
    _check_choice("optimizer.name", o.name, tuple(OPTIMIZERS))
    _check_positive("optimizer.learning_rate", o.learning_rate)
    _check(o.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {o.weight_decay}.")
    _check(
        o.grad_clip_norm >= 0,
        f"optimizer.grad_clip_norm must be >= 0 (0 = off), got {o.grad_clip_norm}.",
    )


def _check_schedule(s: ConfigDict) -> None:
    _check_choice("schedule.name", s.name, SCHEDULES)
    _check(
        len(s.boundaries_epochs) == len(s.scales),
        "schedule.boundaries_epochs and schedule.scales must have the same length.",
    )


def _check_training_extras(config: ConfigDict) -> None:
    """Label smoothing, the weights' moving average and augmentation."""
    _check_fraction("loss.label_smoothing", config.loss.label_smoothing)
    _check_fraction("ema_decay", config.ema_decay)
    _check(
        0 <= config.augment.crop_padding <= 14,
        f"augment.crop_padding must be in [0, 14] pixels, got {config.augment.crop_padding}.",
    )
    _check(
        0.0 <= config.augment.erasing <= 1.0,
        f"augment.erasing must be a probability in [0, 1], got {config.augment.erasing}.",
    )


def _check_early_stopping(config: ConfigDict) -> None:
    es = config.early_stopping
    _check_choice("early_stopping.monitor", es.monitor, MONITORS)
    _check(es.patience >= 1, f"early_stopping.patience must be >= 1, got {es.patience}.")
    if es.enabled:
        _check_validation_split(config, "early_stopping")


def _check_checkpoint(c: ConfigDict) -> None:
    _check(c.every_epochs >= 1, f"checkpoint.every_epochs must be >= 1, got {c.every_epochs}.")
    _check(
        c.min_interval_seconds >= 0,
        f"checkpoint.min_interval_seconds must be >= 0, got {c.min_interval_seconds}.",
    )
    _check(c.keep >= 1, f"checkpoint.keep must be >= 1, got {c.keep}.")


def _check_model_sizes(model: ConfigDict) -> None:
    """The layer widths and counts any model may have; `models.check` checks the rest."""
    for key in ("hidden_sizes", "conv_channels", "stage_channels"):
        if key in model:
            sizes = model[key]
            _check(
                isinstance(sizes, (tuple, list))
                and all(isinstance(n, int) and n >= 1 for n in sizes),
                f"model.{key} must be a tuple of positive integers (layer widths), got {sizes!r}; e.g. model.{key}=(128,).",
            )
    for key in ("stem_channels", "blocks_per_stage"):
        if key in model:
            _check(
                isinstance(model[key], int) and model[key] >= 1,
                f"model.{key} must be a positive integer, got {model[key]!r}.",
            )
    for key in ("dropout_rate", "conv_dropout_rate"):
        if key in model:
            _check_fraction(f"model.{key}", model[key])
