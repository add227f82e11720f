"""The config schema: every key with its default, and the checks that make bad values clear errors.

Config files in `configs/` start from `default()` and change what their recipe needs, so every run
has the same keys and `--config.key=value` overrides hit a known, typed key.
"""

from __future__ import annotations

import ast
import difflib
import itertools
import math
from typing import Any

from ml_collections import ConfigDict

from fmnist_jax.errors import UserError

DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta", "rmsprop")
SCHEDULES = ("constant", "cosine", "exponential", "piecewise")
MONITORS = ("val_accuracy", "val_loss")
NUM_TRAIN_EXAMPLES = 60_000
# Keys a sweep (`grid`) can vary inside one compiled program: numbers that change no array shape
# and no program structure.
SWEEPABLE = (
    "optimizer.learning_rate",
    "optimizer.momentum",
    "optimizer.b1",
    "optimizer.b2",
    "optimizer.eps",
    "optimizer.rho",
    "optimizer.weight_decay",
    "optimizer.grad_clip_norm",
    "schedule.end_factor",
    "schedule.decay_rate",
    "loss.label_smoothing",
    "model.dropout_rate",
    "model.conv_dropout_rate",
    "ema_decay",
    "augment.erasing",
)
# Keys that only some optimizers, schedules or settings read: (the key naming the choice, the
# choices that read it). Set away from its default for a choice that does not read it, a key
# changes nothing, and a run is refused rather than left to look like it used it.
READ_ONLY_BY: dict[str, tuple[str, tuple[Any, ...]]] = {
    "optimizer.momentum": ("optimizer.name", ("sgd", "rmsprop")),
    "optimizer.nesterov": ("optimizer.name", ("sgd",)),
    "optimizer.b1": ("optimizer.name", ("adam", "adamw")),
    "optimizer.b2": ("optimizer.name", ("adam", "adamw")),
    "optimizer.eps": ("optimizer.name", ("adam", "adamw", "adadelta", "rmsprop")),
    "optimizer.rho": ("optimizer.name", ("adadelta", "rmsprop")),
    "schedule.warmup_epochs": ("schedule.name", ("cosine",)),
    "schedule.end_factor": ("schedule.name", ("cosine",)),
    "schedule.decay_rate": ("schedule.name", ("exponential",)),
    "schedule.boundaries_epochs": ("schedule.name", ("piecewise",)),
    "schedule.scales": ("schedule.name", ("piecewise",)),
    **{
        f"early_stopping.{key}": ("early_stopping.enabled", (True,))
        for key in ("monitor", "patience", "min_delta", "restore_best")
    },
    **{
        f"reduce_lr.{key}": ("reduce_lr.enabled", (True,))
        for key in ("monitor", "factor", "patience", "min_delta", "cooldown", "min_lr")
    },
}


def num_train_examples(config: ConfigDict) -> int:
    """How many examples an epoch trains on (the train split after validation, or `data.num_train`)."""
    return config.data.num_train or NUM_TRAIN_EXAMPLES - config.data.num_validation


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def default() -> ConfigDict:
    """Every key a run reads. Durations are in epochs; the optimizer converts them to steps."""
    c = ConfigDict()
    c.seed = 0
    # Seeds trained at once in one compiled program (seed, seed+1, ...); results are mean +- std.
    c.num_seeds = 1
    # A sweep: ((key, (value, ...)), ...) over keys of SWEEPABLE. Every combination (a member) trains
    # with every seed, all in one compiled program; () = the config as it is. See experiments/sweep.
    c.grid = ()
    c.num_epochs = 10
    c.batch_size = 32
    # Evaluation batch; 0 = automatic (250 on CPU, 1000 on GPU/TPU; see backend.eval_batch_size).
    c.eval_batch_size = 0
    # Training steps per compiled call; 0 = automatic (see fmnist_jax.backend.plan_calls).
    c.steps_per_call = 0
    # Compute dtype of the training steps: "bfloat16" for GPU/TPU speed; weights stay float32.
    c.dtype = "float32"
    # Write a jax.profiler trace of a few training steps to <workdir>/profile for TensorBoard.
    c.profile = False
    # Draw the run's figures: <workdir>/plots/, TensorBoard's sample predictions, a sweep's
    # sweep.png. They cost ~1.5 CPU-s in two background processes per run; False for scripted runs
    # whose figures nobody looks at (the tests set it where they check none).
    c.plots = True

    # Multi-host runs (README "Multiple devices and hosts"); one process needs none of this.
    c.distributed = ConfigDict()
    c.distributed.coordinator_address = (
        ""  # "host:port" of process 0, or "auto" (Cloud TPU, SLURM).
    )
    c.distributed.num_processes = 1
    c.distributed.process_id = 0
    c.distributed.timeout_seconds = 60  # How long to wait for every process to join.

    c.data = ConfigDict()
    c.data.tfds_data_dir = ""  # "" = tfds' default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    c.data.source_dir = ""  # "" = Debian's /usr/share/datasets/fashion-mnist when installed.
    c.data.num_validation = 5000
    # Training examples used, the first ones after the validation split; 0 = all of them. A subset
    # trains in proportionally less time: to try a config quickly (the notebook's QUICK mode).
    c.data.num_train = 0
    c.data.standardize = False  # Per-pixel mean/std of the training split, on top of [0, 1].

    c.model = ConfigDict()
    c.model.name = "mlp"
    c.model.hidden_sizes = (128,)
    c.model.activation = "relu"
    c.model.dropout_rate = 0.0

    c.optimizer = ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.momentum = 0.0  # sgd and rmsprop.
    c.optimizer.nesterov = False  # sgd.
    c.optimizer.b1 = 0.9  # adam, adamw.
    c.optimizer.b2 = 0.999  # adam, adamw.
    c.optimizer.eps = 1e-7  # adam, adamw, adadelta, rmsprop (Keras' default).
    c.optimizer.rho = 0.9  # adadelta and rmsprop decay of squared gradients.
    c.optimizer.weight_decay = 0.0  # Decoupled for adamw; L2-like decayed weights for the others.
    c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping.

    c.schedule = ConfigDict()
    c.schedule.name = "constant"
    c.schedule.warmup_epochs = 0.0  # cosine.
    c.schedule.end_factor = 0.0  # cosine: final LR as a fraction of the peak.
    c.schedule.decay_rate = 0.9  # exponential: LR factor per epoch.
    c.schedule.boundaries_epochs = (5, 8)  # piecewise: epochs at which the LR is scaled ...
    c.schedule.scales = (0.1, 0.1)  # ... by these factors (cumulative).

    c.augment = ConfigDict()  # On the device, training batches only (fmnist_jax/augment.py).
    c.augment.crop_padding = (
        0  # Pixels of padding before a random 28x28 crop; 0 = off (4 is usual).
    )
    c.augment.flip = False  # Random horizontal flips.
    c.augment.erasing = 0.0  # Probability of random erasing per image.

    c.loss = ConfigDict()
    c.loss.label_smoothing = 0.0

    # Evaluate (validation, test, checkpoints, export) with an exponential moving average of the
    # weights, updated every step: ema = decay * ema + (1 - decay) * weights. 0 = off; 0.999 is usual.
    c.ema_decay = 0.0
    # Test-time augmentation: average the class probabilities of each image and its mirror image.
    c.test_time_flip = False

    c.checkpoint = ConfigDict()
    # `latest/` is written every `every_epochs` epochs once `min_interval_seconds` have passed since
    # the previous one, after the last epoch and when a stop is asked between epochs. A crash loses at
    # most that much training; 0 writes every `every_epochs`.
    c.checkpoint.every_epochs = 1
    c.checkpoint.min_interval_seconds = 10.0
    c.checkpoint.keep = 3  # Latest checkpoints kept; the best and the final one are kept apart.
    c.checkpoint.asynchronous = True

    c.early_stopping = ConfigDict()
    c.early_stopping.enabled = False
    c.early_stopping.monitor = "val_accuracy"
    c.early_stopping.patience = 3
    c.early_stopping.min_delta = 0.0
    c.early_stopping.restore_best = True

    # Keras' ReduceLROnPlateau, with its defaults: each run's learning rate is multiplied by `factor`
    # (down to `min_lr`) once `monitor` has not improved by more than `min_delta` for `patience`
    # epochs; a `cooldown` of N then leaves N - 1 epochs uncounted (Keras' counting). Needs the
    # constant schedule.
    c.reduce_lr = ConfigDict()
    c.reduce_lr.enabled = False
    c.reduce_lr.monitor = "val_loss"
    c.reduce_lr.factor = 0.1
    c.reduce_lr.patience = 10
    c.reduce_lr.min_delta = 1e-4
    c.reduce_lr.cooldown = 0
    c.reduce_lr.min_lr = 0.0
    return c


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"Unknown {key}={value!r}; choose one of {', '.join(choices)}.")


def _check_positive(key: str, value: float) -> None:
    _check(math.isfinite(value) and value > 0, f"{key} must be a positive number, got {value!r}.")


def _check_fraction(key: str, value: float) -> None:
    _check(0.0 <= value < 1.0, f"{key} must be in [0, 1), got {value!r}.")


def apply_overrides(config: ConfigDict, overrides: str) -> None:
    """Sets `key=value[;key=value...]` (values as Python literals, else strings) on existing keys of `config`."""
    for pair in filter(None, overrides.split(";")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(
                f"Setting {pair!r} is not key=value; write e.g. model.hidden_sizes=(256,);num_epochs=20."
            )
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        set_key(config, key.strip(), value)


def set_key(config: ConfigDict, key: str, value: Any) -> None:
    """Sets the dotted `key` (e.g. "optimizer.learning_rate"), which must exist, to `value`."""
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = node.get(part) if isinstance(node, ConfigDict) else None
    if not isinstance(node, ConfigDict) or leaf not in node:
        raise UserError(
            f"Key {key!r} is not a key of the config: the keys are those of "
            "fmnist_jax/config.py, and a model's own keys those its config file lists under `model`."
        )
    try:
        node[leaf] = value
    except TypeError as e:
        raise UserError(f"Setting {key}={value}: {e}.") from None


def members(config: ConfigDict) -> list[dict[str, Any]]:
    """The sweep's members, each {key: value}: every combination of `config.grid`, the last key
    varying fastest; one member, {}, without a grid."""
    keys = [key for key, _ in config.grid]
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(v for _, v in config.grid))
    ]


def run_seeds(config: ConfigDict) -> list[int]:
    """The seed of each run on the run axis: every member with seeds seed, seed+1, ...; member m's
    seed s is run m * num_seeds + s."""
    return [config.seed + s for _ in members(config) for s in range(config.num_seeds)]


def num_runs(config: ConfigDict) -> int:
    """The length of the run axis: members x seeds."""
    return len(members(config)) * config.num_seeds


def run_values(config: ConfigDict, run: int) -> dict[str, Any]:
    """The swept keys' values of run `run` ({} without a grid)."""
    return members(config)[run // config.num_seeds]


def with_values(config: ConfigDict, values: dict[str, Any]) -> ConfigDict:
    """A copy of `config` without its grid and with `values` set: one member as a run of its own."""
    copy = config.copy_and_resolve_references()
    copy.grid = ()
    for key, value in values.items():
        set_key(copy, key, value)
    return copy


def widest(config: ConfigDict) -> ConfigDict:
    """The config a sweep's program is built from: each swept key at its largest value, so that the
    parts a 0 turns off (dropout, momentum, clipping, weight decay, EMA, erasing) exist for every
    member; each run's own values replace those numbers inside the program."""
    return with_values(config, {key: max(values) for key, values in config.grid})


def _check_grid(config: ConfigDict) -> None:
    """Each grid entry is (a sweepable key this config reads, its values), and each value valid."""
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
    keys = [key for key, _ in grid]
    _check(len(set(keys)) == len(keys), f"grid names a key twice: {keys}.")
    for key, values in grid:
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
        _check(
            isinstance(values, (tuple, list))
            and len(values) > 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values),
            f"grid values of {key} must be a non-empty tuple of numbers, got {values!r}.",
        )
        for value in values:
            _check_values(with_values(config, {key: value}))


def _read(config: ConfigDict, key: str) -> bool:
    """Whether what the config chose (optimizer, schedule, early stopping) reads `key`."""
    choice_key, readers = READ_ONLY_BY.get(key, (None, ()))
    return choice_key is None or config[choice_key] in readers


def _does_nothing(config: ConfigDict, key: str, instead: str) -> str:
    choice_key, readers = READ_ONLY_BY[key]
    return (
        f"{key} does nothing with {choice_key}={config[choice_key]!r} (only with "
        f"{' or '.join(map(repr, readers))}); {instead}, or set {choice_key}."
    )


def _check_read(config: ConfigDict) -> None:
    """Refuses a setting that the chosen optimizer, schedule or early stopping would not read."""
    defaults, swept = default(), {key for key, _ in config.grid}  # the grid is checked by now
    for key in READ_ONLY_BY:
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
            + " Every key is in fmnist_jax/config.py's default()."
        )


def _check_values(config: ConfigDict) -> None:
    """Each value's own checks; a sweep's members too (they differ only in swept keys, which
    `_check_grid` checks are read)."""
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
    _check_choice("dtype", config.dtype, DTYPES)
    _check(
        isinstance(config.num_seeds, int) and config.num_seeds >= 1,
        f"num_seeds must be a positive integer, got {config.num_seeds!r}.",
    )
    if config.grid:
        _check_grid(config)
    d = config.distributed
    _check(d.num_processes >= 1, f"distributed.num_processes must be >= 1, got {d.num_processes}.")
    _check(
        0 <= d.process_id < d.num_processes,
        f"distributed.process_id must be in [0, {d.num_processes - 1}] for num_processes={d.num_processes}, got {d.process_id}.",
    )
    _check(
        d.timeout_seconds >= 1,
        f"distributed.timeout_seconds must be >= 1, got {d.timeout_seconds}.",
    )
    _check_choice("optimizer.name", config.optimizer.name, OPTIMIZERS)
    _check_positive("optimizer.learning_rate", config.optimizer.learning_rate)
    _check(
        config.optimizer.weight_decay >= 0,
        f"optimizer.weight_decay must be >= 0, got {config.optimizer.weight_decay}.",
    )
    _check(
        config.optimizer.grad_clip_norm >= 0,
        f"optimizer.grad_clip_norm must be >= 0 (0 = off), got {config.optimizer.grad_clip_norm}.",
    )
    _check_choice("schedule.name", config.schedule.name, SCHEDULES)
    _check(
        len(config.schedule.boundaries_epochs) == len(config.schedule.scales),
        "schedule.boundaries_epochs and schedule.scales must have the same length.",
    )
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
    _check_choice("early_stopping.monitor", config.early_stopping.monitor, MONITORS)
    _check(
        config.early_stopping.patience >= 1,
        f"early_stopping.patience must be >= 1, got {config.early_stopping.patience}.",
    )
    if config.early_stopping.enabled:
        _check_validation_split(config, "early_stopping")
    _check_reduce_lr(config)
    _check(
        config.checkpoint.every_epochs >= 1,
        f"checkpoint.every_epochs must be >= 1, got {config.checkpoint.every_epochs}.",
    )
    _check(
        config.checkpoint.min_interval_seconds >= 0,
        "checkpoint.min_interval_seconds must be >= 0, got "
        f"{config.checkpoint.min_interval_seconds}.",
    )
    _check(
        config.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1, got {config.checkpoint.keep}."
    )
    for key in ("hidden_sizes", "conv_channels", "stage_channels"):
        if key in config.model:
            sizes = config.model[key]
            _check(
                isinstance(sizes, (tuple, list))
                and all(isinstance(n, int) and n >= 1 for n in sizes),
                f"model.{key} must be a tuple of positive integers (layer widths), got {sizes!r}; e.g. model.{key}=(128,).",
            )
    for key in ("stem_channels", "blocks_per_stage"):
        if key in config.model:
            _check(
                isinstance(config.model[key], int) and config.model[key] >= 1,
                f"model.{key} must be a positive integer, got {config.model[key]!r}.",
            )
    for key in ("dropout_rate", "conv_dropout_rate"):
        if key in config.model:
            _check_fraction(f"model.{key}", config.model[key])
