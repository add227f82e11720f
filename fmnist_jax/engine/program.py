"""A run's compiled program, built in one trip from its config.

`build(config, splits)` gives the model, the optimizer and its schedule, the engine (the compiled
math), the epoch runner over the device-resident training data and the evaluation sets;
`Program.compile()` then compiles every program a run calls and creates the initial state.
`lower_for(config, platform)` builds the same programs for another platform without data, to
prove they build there. This is the public way to get a run's programs (experiments use it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from fmnist_jax import data, engine, models
from fmnist_jax.config import run_axis
from fmnist_jax.engine import backend as backend_lib
from fmnist_jax.engine import initial_state, optim
from fmnist_jax.engine import memory as memory_lib
from fmnist_jax.engine import runner as runner_lib
from fmnist_jax.engine.augment import Augment
from fmnist_jax.engine.distributed import Placement
from fmnist_jax.engine.normalizer import Normalizer
from fmnist_jax.shapes import IMAGE_SHAPE, PyTree


def _engine(
    config: ConfigDict,
    model: models.Model,
    normalizer: Normalizer,
    steps_per_epoch: int,
    backend: str,
    num_runs: int,
) -> tuple[engine.Engine, int]:
    """The compiled math of `num_runs` runs of `config` (a sweep's widest config) as built for
    `backend`, with the training steps per compiled call."""
    has_convolution = backend_lib.uses_convolution(model, IMAGE_SHAPE)
    steps_per_call, unroll = backend_lib.plan_calls(
        config.steps_per_call, backend, has_convolution, steps_per_epoch * config.num_epochs
    )
    eng = engine.Engine(
        model=model,
        optimizer=functools.partial(optim.optimizer, config, steps_per_epoch),
        normalizer=normalizer,
        label_smoothing=config.loss.label_smoothing,
        unroll=unroll,
        compiler_options=backend_lib.compiler_options(backend),
        compute_dtype=config.dtype,
        num_runs=num_runs,
        augment=Augment(**config.augment),
        loop_runs=backend_lib.seed_loop(backend, has_convolution),
        ema_decay=config.ema_decay,
        test_time_flip=config.test_time_flip,
    )
    return eng, steps_per_call


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything a run compiles: built by `build`, compiled by `compile`."""

    config: ConfigDict
    model: models.Model
    engine: engine.Engine
    runner: runner_lib.EpochRunner
    # "test", and "val" when the config holds out a validation split.
    eval_sets: dict[str, runner_lib.EvalSet]
    learning_rate: optax.Schedule
    init_keys: jax.Array
    placement: Placement
    axis: run_axis.RunAxis  # the runs it trains at once, derived once from the config

    @property
    def steps_per_epoch(self) -> int:
        return self.runner.steps_per_epoch

    def _init_args(self) -> tuple:
        ema = self.engine.ema_decay > 0
        return (self.model, self.engine.tx, self.init_keys, ema, self.runner.values)

    def compile(self, poll: Callable[[], None] = lambda: None) -> tuple[engine.TrainState, float]:
        """(the initial state of every run, on the devices; the seconds spent).

        Compiles every training and evaluation program before the first epoch, so epochs never
        compile. XLA releases the GIL while it compiles: the training programs compile in one
        thread, the initial state and the evaluation programs in another, while this thread calls
        `poll` every 0.1 s. `poll` may raise (a stop request): Python runs signal handlers in the
        main thread only, and a main thread inside XLA would see Ctrl-C only once the compile
        ends (a minute and more for the ResNet on a CPU). The threads then finish unwaited for.
        """
        start = time.perf_counter()
        shapes = self.placement.abstract(initial_state.state_shapes(*self._init_args()))
        pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="compile")
        try:
            training = pool.submit(self._compile_training, shapes)
            evaluation = pool.submit(self._initial_state_and_evaluation)
            while concurrent.futures.wait((training, evaluation), timeout=0.1).not_done:
                poll()
            try:
                state = evaluation.result()
            except jax.errors.JaxRuntimeError as e:
                if "RESOURCE_EXHAUSTED" in str(e):
                    training.result()  # the memory check says how many runs fit
                raise
            training.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return state, time.perf_counter() - start

    def _initial_state_and_evaluation(self) -> engine.TrainState:
        state = self.initial_state()
        for split in {s.call_shape: s for s in self.eval_sets.values()}.values():
            self.evaluate(state.weights(), split)  # one compile per call shape
        return state

    def initial_state(self) -> engine.TrainState:
        """Every run's initial state, on the devices (compiling its program on the first call)."""
        return self.placement.put(initial_state.init_states(*self._init_args()))

    def _compile_training(self, shapes: engine.TrainState) -> None:
        self.runner.compile(shapes)
        self.memory().check(self.config.num_seeds)

    def memory(self) -> memory_lib.Memory:
        """What the compiled training call needs on each device, and what the device offers."""
        return memory_lib.Memory(
            needed=self.runner.memory_bytes(),
            shared=self.runner.images.nbytes + self.runner.labels.nbytes,
            num_runs=self.engine.num_runs,
            available=memory_lib.available(self.placement.mesh.local_devices[0]),
        )

    def evaluate(
        self, weights: dict[str, PyTree], split: str | runner_lib.EvalSet
    ) -> runner_lib.Evaluation:
        """`weights`' evaluation of a split (`.per_run()`: each run's mean loss and accuracy)."""
        eval_set = self.eval_sets[split] if isinstance(split, str) else split
        return runner_lib.evaluate(self.engine, weights, eval_set)

    def model_item(self, weights: dict[str, PyTree]) -> dict[str, PyTree]:
        """What checkpoints keep of a model: its weights and the input normalization."""
        return {**weights, "normalizer": self.engine.normalizer.as_tree()}


def build(
    config: ConfigDict,
    splits: data.Splits,
    placement: Placement | None = None,
    backend: str | None = None,
    axis: run_axis.RunAxis | None = None,
) -> Program:
    """The programs of `config` over `splits`, for `backend` (default: the one JAX runs on), with
    the data on `placement`'s devices (default: all of them, the runs spread over them), training
    the runs of `axis` (default: the config's members x seeds)."""
    backend = backend or jax.default_backend()
    axis = axis or run_axis.RunAxis.of(config)
    widest, values = axis.widest(config), axis.arrays()
    model = models.create(widest.model, backend)
    placement = placement or Placement.over_all_devices(axis.num_runs)
    normalizer = Normalizer.fit(splits.train_images, config.data.standardize)
    steps_per_epoch = len(splits.train_labels) // config.batch_size
    eng, steps_per_call = _engine(
        widest, model, normalizer, steps_per_epoch, backend, axis.num_runs
    )
    init_keys, shuffle_keys, dropout_keys = initial_state.seed_keys(list(axis.seeds))
    runner = runner_lib.EpochRunner(
        engine=eng,
        images=splits.train_images,
        labels=splits.train_labels,
        batch_size=config.batch_size,
        steps_per_call=steps_per_call,
        shuffle_key=shuffle_keys,
        dropout_key=dropout_keys,
        values=values,
        placement=placement,
    )
    eval_splits = {"test": (splits.test_images, splits.test_labels)}
    if len(splits.val_labels):
        eval_splits["val"] = (splits.val_images, splits.val_labels)
    return Program(
        config=config,
        model=model,
        engine=eng,
        runner=runner,
        eval_sets=runner_lib.EvalSet.create_all(
            eval_splits, backend_lib.eval_batch_size(config.eval_batch_size, backend), placement
        ),
        learning_rate=optim.schedule(config, steps_per_epoch),
        init_keys=init_keys,
        placement=placement,
        axis=axis,
    )


def lower_for(
    config: ConfigDict, platform: str, num_train: int = 55_000
) -> dict[str, jax.stages.Lowered]:
    """The training call and the evaluation program of `config` exactly as a run on `platform` ("cpu",
    "cuda", "tpu") builds them, lowered on this machine without compiling: proves that every backend's
    programs build, with that backend's choices (steps per call, unrolling, seed loop, pooling ops)."""
    axis = run_axis.RunAxis.of(config)
    widest = axis.widest(config)
    model = models.create(widest.model, platform)
    normalizer = (
        Normalizer(mean=np.zeros(IMAGE_SHAPE, np.float32), std=np.ones(IMAGE_SHAPE, np.float32))
        if config.data.standardize
        else Normalizer()
    )
    steps_per_epoch = num_train // config.batch_size
    eng, steps_per_call = _engine(
        widest, model, normalizer, steps_per_epoch, platform, axis.num_runs
    )
    init_key, _, dropout_key = initial_state.seed_keys(list(axis.seeds))
    state = initial_state.state_shapes(model, eng.tx, init_key, ema=eng.ema_decay > 0)
    steps = min(steps_per_call, steps_per_epoch)
    images = jax.ShapeDtypeStruct((num_train, *IMAGE_SHAPE), jnp.uint8)
    labels = jax.ShapeDtypeStruct((num_train,), jnp.int32)
    indices = jax.ShapeDtypeStruct((eng.num_runs, steps, config.batch_size), jnp.int32)
    batches = runner_lib.eval_batches(  # the test split in one call
        10_000, backend_lib.eval_batch_size(config.eval_batch_size, platform)
    )
    train_call = jax.jit(eng.train_program(), donate_argnums=(0, 1)).trace(
        state,
        engine.Sums.zeros(eng.num_runs),
        images,
        labels,
        indices,
        dropout_key,
        axis.arrays(),
    )
    weights = state.weights()
    eval_call = jax.jit(eng.eval_program()).trace(
        engine.eval_params(weights),
        weights["batch_stats"],
        engine.Sums.zeros(eng.num_runs),
        jax.ShapeDtypeStruct((*batches, *IMAGE_SHAPE), jnp.uint8),
        jax.ShapeDtypeStruct(batches, jnp.int32),
        jax.ShapeDtypeStruct(batches, jnp.bool_),
    )
    return {
        "train": train_call.lower(lowering_platforms=(platform,)),
        "eval": eval_call.lower(lowering_platforms=(platform,)),
    }
