"""Configs: the schema (here: every key with its default, and setting keys by name), the checks
that turn a config that cannot work into one clear error (`checks`), and the run axis a config
describes, its members x seeds (`run_axis`).

Config files in `configs/` start from `default()` and change what their recipe needs, so every run
has the same keys and `--config.key=value` overrides hit a known, typed key. The checks that make
bad values clear errors are in `checks`; the run axis a config describes is in `run_axis`.
"""

from __future__ import annotations

import ast
from typing import Any

from ml_collections import ConfigDict

from fmnist_jax.errors import UserError

DTYPES = ("float32", "bfloat16")
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
# Keys that only some schedules or settings read (the optimizers' own are in `optimizers.OPTIMIZERS`):
# (the key naming the choice, the choices that read it). Set away from its default for a choice that does not read it, a key
# changes nothing, and a run is refused rather than left to look like it used it.
READ_ONLY_BY: dict[str, tuple[str, tuple[Any, ...]]] = {
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
    # Training steps per compiled call; 0 = automatic (see fmnist_jax.engine.backend.plan_calls).
    c.steps_per_call = 0
    # Compute dtype of the training steps: "bfloat16" for GPU/TPU speed; weights stay float32.
    c.dtype = "float32"
    # Write a jax.profiler trace of a few training steps to <workdir>/profile for TensorBoard.
    c.profile = False
    # Draw the run's figures: <workdir>/plots/, TensorBoard's sample predictions, a sweep's
    # sweep.png. They cost CPU time after the last epoch; False for scripted runs
    # whose figures nobody looks at (the tests set it where they check none).
    c.plots = True

    _add_data_and_model(c)
    _add_optimization(c)
    _add_run_control(c)
    _add_search(c)
    return c


def _add_data_and_model(c: ConfigDict) -> None:
    """Several hosts, the data and the model."""
    # Multi-host runs (docs/runs.md, "Several devices and hosts"); one process needs none of this.
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


def _add_optimization(c: ConfigDict) -> None:
    """The optimizer, its schedule, augmentation, the loss and the weights' moving average."""
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

    c.augment = ConfigDict()  # On the device, training batches only (fmnist_jax/engine/augment.py).
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


def _add_run_control(c: ConfigDict) -> None:
    """When to save, and when to stop or lower the learning rate on validation."""
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


def _add_search(c: ConfigDict) -> None:
    """A hyperparameter search (`python -m experiments.search`, `fmnist_jax.tuning.search.run`); a
    single run does not read these."""
    c.search = ConfigDict()
    # ((key, spec), ...): ("int", low, high, step), ("choice", (value, ...)), ("uniform", low,
    # high) or ("log_uniform", low, high); see fmnist_jax/tuning/search_space.py.
    c.search.space = ()
    # Optuna's sampler: grid, random, halton, sobol, tpe or gp (gp needs PyTorch).
    c.search.algorithm = "random"
    # Optuna's pruner, which stops trials early: none, hyperband, successive_halving or median.
    c.search.pruner = "hyperband"
    c.search.trials = 20  # trials of random, halton and tpe (a grid tries every combination)
    c.search.population = 8  # slots: trials trained side by side in one compiled program
    # How the trials train: "side_by_side" in the slots of one program at the space's widest
    # widths; "own_widths" each in a program of its own widths, as many at once as there are cores
    # (at most `population`); "auto": own widths on a CPU (compute-bound: every slot side by side
    # costs the widest trial's step), side by side elsewhere.
    c.search.execution = "auto"
    c.search.max_epochs = 10  # the most epochs a trial trains (Hyperband's R)
    c.search.factor = 3  # the pruner keeps the best 1/factor at each rung, factor x apart
    c.search.objective = "val_accuracy"  # or val_loss, on the validation split, never test
    # Two objectives to trade off instead: `objective`'s kind first, then "params" (the trial's
    # parameter count), e.g. ("val_accuracy", "params"); the search then reports the Pareto front,
    # and needs search.pruner "dominated" (stop a trial another dominates at a rung) or "none".
    c.search.objectives = ()
    c.search.seed = 0  # the sampler's seed; the trials train with `seed`
    # The best trial then trains this many epochs in best/ and keeps its best epoch (the Keras
    # Tuner tutorial's 50); 0 trains it to its own best epoch in the search.
    c.search.final_epochs = 50
    # Where the study lives: "" for the workdir's search.db (SQLite), or a database URL that
    # workers on several machines share, e.g. "postgresql://user@host:5432/db".
    c.search.storage = ""
    c.search.study = ""  # the study's name in the storage; "" names it after the workdir
    # Each worker's running trials beat this often; after 6 missed beats another worker retries them.
    c.search.heartbeat_seconds = 10


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
            "fmnist_jax/config/__init__.py, and a model's own keys those its config file lists under `model`."
        )
    try:
        node[leaf] = value
    except TypeError as e:
        raise UserError(f"Setting {key}={value}: {e}.") from None


def with_values(config: ConfigDict, values: dict[str, Any]) -> ConfigDict:
    """A copy of `config` without its grid and with `values` set: one member as a run of its own."""
    copy = config.copy_and_resolve_references()
    copy.grid = ()
    for key, value in values.items():
        set_key(copy, key, value)
    return copy
