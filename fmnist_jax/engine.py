"""The compiled math of training and evaluation, as pure functions over explicit state.

Data lives on the device as uint8 for the whole run. An epoch is: one compiled permutation of the
training indices, then the steps in compiled calls of `steps_per_call` steps each (a `lax.scan`),
with loss and accuracy summed on the device. The host only enqueues calls: nothing is read back
until the epoch ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax.augment import Augment
from fmnist_jax.distributed import DataParallel, fetch
from fmnist_jax.models import Model
from fmnist_jax.shapes import PyTree


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. The step also keys the per-step dropout RNG.

    `ema_params` is the moving average of `params` when `Engine.ema_decay` is set, else `{}`.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    ema_params: PyTree

    def weights(self) -> dict[str, PyTree]:
        """What evaluation and inference need (see `eval_params`); checkpoints store it as is.

        `ema_params` only when kept, so runs without an EMA keep the checkpoint layout of runs
        from before it existed (and resume from them).
        """
        weights = {"params": self.params, "batch_stats": self.batch_stats}
        return {**weights, "ema_params": self.ema_params} if self.ema_params else weights


def eval_params(weights: dict[str, PyTree]) -> PyTree:
    """The parameters to evaluate: the moving average when a run keeps one."""
    return weights.get("ema_params") or weights["params"]


@flax.struct.dataclass
class Sums:
    """Per-epoch sums kept on the device; `first_nonfinite_step` is -1 while every loss is finite."""

    loss: jax.Array
    correct: jax.Array
    count: jax.Array
    first_nonfinite_step: jax.Array

    @classmethod
    def zeros(cls, num_runs: int) -> Sums:
        shape = (num_runs,)  # NumPy: no compiled op just to make zeros
        return cls(
            loss=np.zeros(shape, np.float32),
            correct=np.zeros(shape, np.int32),
            count=np.zeros(shape, np.int32),
            first_nonfinite_step=np.full(shape, -1, np.int32),
        )

    def per_run(self) -> list[dict[str, float]]:
        """Host values, read in one transfer: mean loss and accuracy and the first non-finite step, per run."""
        loss, correct, count, bad_step = jax.device_get(
            (self.loss, self.correct, self.count, self.first_nonfinite_step)
        )
        return [
            {
                "loss": float(total) / max(int(n), 1),
                "accuracy": float(c) / max(int(n), 1),
                "first_nonfinite_step": int(b),
            }
            for total, c, n, b in zip(loss, correct, count, bad_step, strict=True)
        ]


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Maps uint8 pixels to model inputs: [0, 1], then optionally per-pixel standardization."""

    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, train_images: np.ndarray, standardize: bool) -> Normalizer:
        if not standardize:
            return cls()
        scaled = train_images.astype(np.float32) / 255.0
        return cls(mean=scaled.mean(axis=0), std=np.maximum(scaled.std(axis=0), 1e-3))

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> Normalizer:
        return cls(mean=tree["mean"], std=tree["std"]) if tree else cls()

    def as_tree(self) -> dict[str, Any]:
        """For checkpoints: inference needs the training split's statistics, not the data."""
        return {} if self.mean is None else {"mean": self.mean, "std": self.std}

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


def variables(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    return {"params": params, "batch_stats": batch_stats}


def seed_keys(seeds: list[int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, shuffle, dropout) keys of runs with these seeds, each `[len(seeds)]`.

    Run k gets exactly the keys of a run of its own with seed `seeds[k]`. One program, compiled
    unoptimized (eagerly, the split compiles six programs: 0.4 vs 0.17 s on the seed MLP).
    """
    return jit_unoptimized(_split_seeds, runs_once=True)(np.asarray(seeds, np.int32))


def _split_seeds(seeds: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(seeds)
    return keys[:, 0], keys[:, 1], keys[:, 2]


# XLA:CPU's optimization passes cost more than they save in a program that runs once, or whose time
# goes to a sort: the initial state compiles ~4x faster without them (reference MLP 1.0 -> 0.23 s,
# ResNet 4.0 -> 1.1 s), the epoch's shuffle 0.55 -> 0.36 s and still takes ~40 ms.
_UNOPTIMIZED_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": "0"}}
# A program that runs once also takes XLA:CPU's older loop emitters, which generate its code in
# about half the CPU time of the fusion emitters, with bit-identical results (seed MLP's seed keys
# and initial state: 0.9 -> 0.5 CPU-s). Programs run every step or epoch keep the fusion emitters:
# without them the training call's epochs take 1.8x as long.
_ONCE_COMPILER_OPTIONS = {
    "cpu": {**_UNOPTIMIZED_COMPILER_OPTIONS["cpu"], "xla_cpu_use_fusion_emitters": False}
}


def jit_unoptimized(
    fn: Callable[..., Any], runs_once: bool = False, **jit_options: Any
) -> Callable[..., Any]:
    """`jax.jit` compiled without XLA:CPU's optimization passes: for initialization, the seed keys
    and the shuffle, whose compile time the passes would lengthen more than they shorten any run;
    `runs_once` (the seed keys, the initial state) also with the loop emitters."""
    options = _ONCE_COMPILER_OPTIONS if runs_once else _UNOPTIMIZED_COMPILER_OPTIONS
    return jax.jit(fn, compiler_options=options.get(jax.default_backend()), **jit_options)


def _init_fn(
    model: Model, tx: optax.GradientTransformation, ema: bool
) -> Callable[[jax.Array], TrainState]:
    return jax.vmap(functools.partial(init_state, model, tx, ema=ema))


def init_states(
    model: Model,
    tx: optax.GradientTransformation,
    init_keys: jax.Array,
    ema: bool = False,
) -> TrainState:
    """`init_state` of each of the `[num_runs]` keys, stacked on a leading run axis, as one compiled program."""
    return jit_unoptimized(_init_fn(model, tx, ema), runs_once=True)(init_keys)


def state_shapes(
    model: Model,
    tx: optax.GradientTransformation,
    init_keys: jax.Array,
    ema: bool = False,
) -> TrainState:
    """The shapes and dtypes of `init_states`' result, computing nothing (to compile against)."""
    return jax.eval_shape(_init_fn(model, tx, ema), init_keys)


def select_run(tree: PyTree, index: int) -> PyTree:
    """One run's slice of a tree with a leading run axis."""
    return jax.tree.map(lambda a: a[index], tree)


def init_state(
    model: Model,
    tx: optax.GradientTransformation,
    key: jax.Array,
    ema: bool = False,
) -> TrainState:
    """Initial weights (and batch-norm statistics) and optimizer state of one run."""
    weights = model.init(key)
    params = weights["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=weights["batch_stats"],
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else {},
    )


def log_probabilities(
    model: Model,
    normalizer: Normalizer,
    params: PyTree,
    batch_stats: PyTree,
    images: jax.Array,
    flip: bool,
) -> jax.Array:
    """Inference log-probabilities for uint8 images; with `flip`, of the mean of the probabilities
    of each image and its mirror image (test-time augmentation)."""
    x = normalizer(images)
    v = variables(params, batch_stats)
    out = jax.nn.log_softmax(model.apply(v, x)[0])
    if flip:
        mirrored = jax.nn.log_softmax(model.apply(v, x[:, :, ::-1, :])[0])
        out = jnp.logaddexp(out, mirrored) - jnp.log(2.0)
    return out


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example softmax cross-entropy on integer labels, with label smoothing (0 = none: the
    targets stay exactly one-hot; a sweep's smoothing is a traced per-run value)."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class Engine:
    """Builds the compiled train and eval functions for one model, optimizer and normalizer.

    A sweep gives each run its own values of swept keys (`values`, {config key: traced scalar}):
    they replace the optimizer's numbers, the label smoothing, the EMA decay, the erasing
    probability and the dropout rates inside the step; without a sweep `values` is {}.
    """

    model: Model
    # The optimizer of a run's values (see `fmnist_jax.optim.optimizer`).
    optimizer: Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]
    normalizer: Normalizer
    label_smoothing: float = 0.0
    # `lax.scan`'s unroll of each call's steps: True = all of them, k = k steps per loop iteration.
    unroll: bool | int = False
    compiler_options: dict[str, str] | None = None
    # Compute dtype of the training steps; weights, optimizer state and evaluation stay float32.
    compute_dtype: str = "float32"
    # Independent runs trained at once (the seeds): every state, key, sum and batch carries a leading
    # run axis of this length, 1 for a single run.
    num_runs: int = 1
    augment: Augment = Augment()
    # How the runs share one program: jax.vmap, or one unrolled copy of the math per run (see `seed_loop`).
    loop_runs: bool = False
    # Moving average of the weights, updated every step (0 = none); see `train_step`.
    ema_decay: float = 0.0
    # Evaluation averages each image's prediction with its mirror image's.
    test_time_flip: bool = False

    @property
    def tx(self) -> optax.GradientTransformation:
        """The optimizer as the config states it: what creates every run's optimizer state."""
        return self.optimizer({})

    def over_runs(
        self, fn: Callable[..., Any], in_axes: tuple[int | None, ...]
    ) -> Callable[..., Any]:
        """`fn` of one run mapped over the run axis (axis 0) of the arguments whose `in_axes` is 0.

        The one place that chooses how runs share a program: `jax.vmap`, or one copy of `fn` per run
        (`loop_runs`; and for a single run, where one copy is exactly the plain program).
        """
        if not (self.loop_runs or self.num_runs == 1):
            return jax.vmap(fn, in_axes=in_axes)

        def looped(*args):
            outs = [
                fn(
                    *(
                        a if axis is None else select_run(a, k)
                        for a, axis in zip(args, in_axes, strict=False)
                    )
                )
                for k in range(self.num_runs)
            ]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

        return looped

    def _compute(self, tree: PyTree) -> PyTree:
        return jax.tree.map(
            lambda a: a.astype(self.compute_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            tree,
        )

    def train_step(
        self,
        state: TrainState,
        sums: Sums,
        images: jax.Array,
        labels: jax.Array,
        dropout_key: jax.Array,
        values: Mapping[str, jax.Array],
    ) -> tuple[TrainState, Sums]:
        """One optimizer update on a uint8 batch; adds its loss and accuracy to `sums`."""
        augment_key, model_key = jax.random.split(jax.random.fold_in(dropout_key, state.step))
        if self.augment.enabled:
            images = self.augment(images, augment_key, values.get("augment.erasing"))
        x = self.normalizer(images)
        rates = {k.removeprefix("model."): v for k, v in values.items() if k.startswith("model.")}

        def loss_fn(params):
            logits, batch_stats = self.model.apply(
                # Batch-norm statistics stay float32: bfloat16 cannot hold their 1% updates.
                variables(self._compute(params), state.batch_stats),
                self._compute(x),
                train=True,
                dropout_key=model_key,
                rates=rates,
            )
            logits = logits.astype(jnp.float32)
            smoothing = values.get("loss.label_smoothing", self.label_smoothing)
            loss = cross_entropy(logits, labels, smoothing).mean()
            return loss, (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = self.optimizer(values).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if self.ema_decay:
            # TensorFlow's ExponentialMovingAverage warm-up: early steps average over fewer steps.
            decay = jnp.minimum(
                values.get("ema_decay", self.ema_decay), (1.0 + state.step) / (10.0 + state.step)
            )
            ema_params = jax.tree.map(
                lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params
            )
        n = labels.shape[0]
        finite = jnp.isfinite(loss)
        sums = Sums(
            loss=sums.loss + loss * n,
            correct=sums.correct + jnp.sum(jnp.argmax(logits, -1) == labels),
            count=sums.count + n,
            first_nonfinite_step=jnp.where(
                (sums.first_nonfinite_step < 0) & ~finite, state.step, sums.first_nonfinite_step
            ),
        )
        return TrainState(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=ema_params,
        ), sums

    def train_steps(
        self,
        state: TrainState,
        sums: Sums,
        images: jax.Array,
        labels: jax.Array,
        batch_indices: jax.Array,
        dropout_key: jax.Array,
        values: Mapping[str, jax.Array],
    ) -> tuple[TrainState, Sums]:
        """`len(batch_indices)` steps; batch i gathers the examples `batch_indices[i]` on the device."""

        def body(carry, idx):
            return self.train_step(*carry, images[idx], labels[idx], dropout_key, values), None

        if self.unroll is True and len(batch_indices) == 1:
            # `lax.scan` keeps a loop of one step even when told to unroll, and XLA:CPU runs a
            # convolution in a loop ~25x slower (see `plan_calls`).
            return body((state, sums), batch_indices[0])[0]
        (state, sums), _ = jax.lax.scan(body, (state, sums), batch_indices, unroll=self.unroll)
        return state, sums

    def eval_sums(
        self,
        params: PyTree,
        batch_stats: PyTree,
        sums: Sums,
        images: jax.Array,
        labels: jax.Array,
        mask: jax.Array,
    ) -> tuple[Sums, jax.Array]:
        """`sums` plus the loss and accuracy sums over pre-batched `[num_batches, batch, ...]` data
        (`mask` marks real examples), and every example's class probabilities `[num_batches, batch,
        classes]`: the reports draw the test split's, so no second program predicts it again. A
        split evaluated in several calls adds in the same order as in one."""

        def body(sums, batch):
            x, y, m = batch
            logits = log_probabilities(
                self.model, self.normalizer, params, batch_stats, x, self.test_time_flip
            )
            loss = cross_entropy(logits, y, 0.0)
            correct = (jnp.argmax(logits, -1) == y) & m
            return Sums(
                loss=sums.loss + jnp.sum(jnp.where(m, loss, 0.0)),
                correct=sums.correct + jnp.sum(correct),
                count=sums.count + jnp.sum(m),
                first_nonfinite_step=sums.first_nonfinite_step,
            ), jnp.exp(logits)

        return jax.lax.scan(body, sums, (images, labels, mask))

    def train_program(self) -> Callable[..., tuple[TrainState, Sums]]:
        """`train_steps` over every run: (state, sums, images, labels, batch_indices, dropout_key, values)."""
        return self.over_runs(self.train_steps, in_axes=(0, 0, None, None, 0, 0, 0))

    def eval_program(self) -> Callable[..., tuple[Sums, jax.Array]]:
        """`eval_sums` over every run: (params, batch_stats, sums, images, labels, mask)."""
        return self.over_runs(self.eval_sums, in_axes=(0, 0, 0, None, None, None))

    @functools.cached_property
    def compiled_eval_sums(self) -> Callable[..., tuple[Sums, jax.Array]]:
        return jax.jit(self.eval_program(), compiler_options=self.compiler_options)

    def evaluate(self, weights: dict[str, PyTree], split: EvalSet) -> Evaluation:
        """`weights`' (see `TrainState.weights`) evaluation of `split`, per run, left on the devices."""
        sums = split.placement.put(Sums.zeros(self.num_runs))
        probabilities = []
        for images, labels, mask in split.calls:
            sums, call_probabilities = self.compiled_eval_sums(
                eval_params(weights), weights["batch_stats"], sums, images, labels, mask
            )
            probabilities.append(call_probabilities)
        return Evaluation(sums, tuple(probabilities), split.num_examples)


@flax.struct.dataclass
class Evaluation:
    """A split's evaluation, on the devices until read: the sums, and each call's class
    probabilities `[num_runs, batches, batch, classes]` (padding included)."""

    sums: Sums
    probabilities: tuple[jax.Array, ...]
    num_examples: int = flax.struct.field(pytree_node=False)

    def per_run(self) -> list[dict[str, float]]:
        return self.sums.per_run()

    def run_probabilities(self, run: int) -> np.ndarray:
        """Run `run`'s `[num_examples, classes]` class probabilities, on the host."""
        calls = [p[run].reshape(-1, p.shape[-1]) for p in fetch(self.probabilities)]
        return np.concatenate(calls)[: self.num_examples]


def epoch_batches(
    key: jax.Array, epoch: jax.Array, num_examples: int, num_steps: int, batch_size: int
) -> jax.Array:
    """Epoch `epoch`'s shuffle of the training indices as `[num_steps, batch_size]`; the remainder is left out."""
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return order[: num_steps * batch_size].reshape(num_steps, batch_size)


def uses_convolution(model: Model, image_shape: tuple[int, ...]) -> bool:
    """Whether the model's forward pass contains a convolution (read from its jaxpr, nothing runs)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(model.apply)(model.shapes(), x)
    return "conv_general_dilated" in str(jaxpr)


# On XLA:CPU a run of fewer steps than this calls conv models one step at a time: a call of 8
# unrolled steps compiles ~3 s (reference CNN) to ~11-21 s (configs/fast.py) longer than one of a
# single step and saves 0-2 ms (reference CNN) to ~40-90 ms (fast.py) per step, so it pays from a
# few hundred steps on (`python -m experiments.step_loops --calls=1,8 --config=configs/fast.py`).
_SHORT_RUN_STEPS = 256


def plan_calls(
    steps_per_call: int, backend: str, has_convolution: bool, run_steps: int
) -> tuple[int, bool]:
    """(steps per compiled call, whether to unroll them) for a run of `run_steps` training steps;
    `steps_per_call` 0 means choose.

    XLA:CPU runs convolutions inside a rolled loop ~25x slower than outside one (reference CNN, batch 64:
    330 vs 13 ms/step), so on CPU conv models run unrolled calls: of 8 steps (configs/fast.py: ~210-285
    ms/step vs ~295-325 for single steps), or of one step in a short run, where compiling 8 costs more
    than it saves. Everything else runs a whole epoch as one rolled scan (reference MLP: 0.13
    ms/step rolled vs 0.23 ms/step in unrolled chunks).
    """
    if backend == "cpu" and has_convolution:
        return steps_per_call or (8 if run_steps >= _SHORT_RUN_STEPS else 1), True
    return steps_per_call or 2**31 - 1, False


def eval_batch_size(requested: int, backend: str) -> int:
    """Examples per evaluation batch; `requested` 0 means choose.

    On XLA:CPU a batch's activations should stay in the cores' caches: batches of 250 validate
    ~3x faster than of 1000 (seed MLP 12 vs 34 ms for 5,000 images; CNN 0.78 vs 1.38 s, and its
    evaluation compiles in 2.7 instead of 4.4 s). 250 divides both splits. GPUs and TPUs keep 1000.
    """
    return requested or (250 if backend == "cpu" else 1000)


def seed_loop(backend: str, has_convolution: bool) -> bool:
    """Whether several seeds run as one unrolled copy of the step per seed instead of `jax.vmap`.

    vmap turns a convolution over per-seed weights into a grouped convolution, which XLA:CPU runs
    slowly (reference CNN, 3 seeds: 58 s per epoch vmapped vs ~27 s for three copies).
    """
    return backend == "cpu" and has_convolution


def compiler_options(backend: str) -> dict[str, str] | None:
    """XLA options for the train and eval programs of `backend`.

    On XLA:CPU, YNNPACK convolutions are slower than the Eigen ones (reference CNN Adam step at batch 64:
    13 ms with the defaults vs 8.6 ms with YNNPACK kept for reductions only; the MLP is unchanged),
    so YNNPACK is kept for reductions only, where this XLA has YNNPACK at all (jaxlib 0.7 has not).
    """
    option = ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_REDUCE")
    return dict([option]) if backend == "cpu" and _xla_accepts(*option) else None


@functools.cache
def _xla_accepts(option: str, value: str) -> bool:
    """Whether this jaxlib's XLA:CPU knows a compile option: older ones refuse unknown names. False
    where the process has no CPU backend (JAX_PLATFORMS=cuda): nothing is compiled for it there."""
    try:
        x = jax.device_put(np.float32(0), jax.local_devices(backend="cpu")[0])
        jax.jit(lambda x: x + 1).lower(x).compile(compiler_options={option: value})
    except RuntimeError:  # JaxRuntimeError for an unknown option, RuntimeError for no CPU backend
        return False
    return True


_BATCH_AXIS = 2  # of the batch indices [run, step, example]: the axis split over the devices


@dataclasses.dataclass
class EpochRunner:
    """Runs training epochs over device-resident data with ahead-of-time compiled step chunks.

    The data and keys are replicated on `placement`'s mesh and each batch is split over its devices
    (see `fmnist_jax.distributed`); on one device that is plain single-device training.
    """

    engine: Engine
    images: jax.Array
    labels: jax.Array
    batch_size: int
    steps_per_call: int
    shuffle_key: jax.Array
    dropout_key: jax.Array
    # Each run's values of the swept keys, `[num_runs]` each ({} without a sweep; see `Engine`).
    values: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    placement: DataParallel = dataclasses.field(default_factory=DataParallel.over_all_devices)
    # Compiled training calls by length; a `dataclasses.replace` copy starts with none.
    _executables: dict[int, Any] = dataclasses.field(default_factory=dict, init=False)

    def __post_init__(self):
        self.placement.check_batch("batch_size", self.batch_size)
        self.images, self.labels, self.shuffle_key, self.dropout_key, self.values = (
            self.placement.put(
                (self.images, self.labels, self.shuffle_key, self.dropout_key, self.values)
            )
        )
        shuffle = functools.partial(
            epoch_batches,
            num_examples=len(self.labels),
            num_steps=self.steps_per_epoch,
            batch_size=self.batch_size,
        )
        self._shuffle = jit_unoptimized(
            self.engine.over_runs(shuffle, in_axes=(0, None)),
            out_shardings=self.placement.split(_BATCH_AXIS),
        )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.batch_size

    def _chunks(self) -> list[tuple[int, int]]:
        """The epoch's calls as (first step, end): whole calls of `steps_per_call`, then the
        remainder one step at a time, whose program compiles faster than one of the remainder's
        length (on CPU, configs/fast.py: 6.6 s for one unrolled step, 10.7 s for four)."""
        steps = self.steps_per_epoch
        length = min(self.steps_per_call, steps)
        whole = steps - steps % length
        return [(start, start + length) for start in range(0, whole, length)] + [
            (start, start + 1) for start in range(whole, steps)
        ]

    def set_value(self, key: str, per_run: Sequence[float]) -> None:
        """Gives every run a new value of `key` from the next call on (`reduce_lr`'s learning
        rates): an argument of the compiled calls, so nothing compiles again."""
        self.values = {**self.values, key: self.placement.put(np.asarray(per_run, np.float32))}

    def batches(self, epoch: int) -> jax.Array:
        """Epoch `epoch`'s shuffled batches of training indices, `[num_runs, steps, batch]`."""
        return self._shuffle(self.shuffle_key, epoch)

    def _zeros(self) -> Sums:
        return self.placement.put(Sums.zeros(self.engine.num_runs))

    def _executable(self, state: TrainState, length: int) -> Any:
        if length not in self._executables:
            jitted = jax.jit(self.engine.train_program(), donate_argnums=(0, 1))
            indices = jax.ShapeDtypeStruct(
                (self.engine.num_runs, length, self.batch_size),
                jnp.int32,
                sharding=self.placement.split(_BATCH_AXIS),
            )
            lowered = jitted.lower(
                state,
                self._zeros(),
                self.images,
                self.labels,
                indices,
                self.dropout_key,
                self.values,
            )
            self._executables[length] = lowered.compile(
                compiler_options=self.engine.compiler_options
            )
        return self._executables[length]

    def compile(self, state: TrainState) -> None:
        """Compiles every chunk length an epoch uses (at most two), so epochs never compile."""
        for start, end in self._chunks():
            self._executable(state, end - start)
        self.batches(0)  # compiles the shuffle

    def memory_bytes(self) -> int:
        """The most memory one compiled training call needs (its arguments, the data included,
        outputs and temporaries, as XLA plans them); after `compile`."""
        stats = [e.memory_analysis() for e in self._executables.values()]
        return max(
            s.argument_size_in_bytes
            + s.output_size_in_bytes
            - s.alias_size_in_bytes
            + s.temp_size_in_bytes
            for s in stats
        )

    def trace(self, state: TrainState, log_dir: str, num_steps: int = 16) -> int:
        """Writes a `jax.profiler` trace of about `num_steps` training steps to `log_dir` (for TensorBoard).

        Runs on a copy of `state` after one warm-up call, so training itself is unchanged.
        Returns the number of steps traced.
        """
        length = min(num_steps, self.steps_per_call, self.steps_per_epoch)
        executable = self._executable(state, length)
        batches = self.batches(0)
        calls = range(
            0,
            min(math.ceil(num_steps / length) * length, self.steps_per_epoch - length + 1),
            length,
        )
        copy = jax.tree.map(jnp.copy, state)
        copy, sums = executable(
            copy,
            self._zeros(),
            self.images,
            self.labels,
            batches[..., :length, :],
            self.dropout_key,
            self.values,
        )
        jax.block_until_ready(sums)
        with jax.profiler.trace(log_dir):
            for start in calls:
                copy, sums = executable(
                    copy,
                    sums,
                    self.images,
                    self.labels,
                    batches[..., start : start + length, :],
                    self.dropout_key,
                    self.values,
                )
            jax.block_until_ready(sums)
        return len(calls) * length

    def run(
        self, state: TrainState, epoch: int, progress: Callable[[int | None], None] | None = None
    ) -> tuple[TrainState, Sums]:
        """Epoch `epoch` in its own shuffled order; returns without waiting for the devices.

        With `progress`, epochs of several calls wait for the devices about 20 times to report the
        steps done (a few ms per epoch), then `progress(None)`.
        """
        self.compile(state)
        batches = self.batches(epoch)
        sums = self._zeros()
        chunks = self._chunks()
        report_every = max(1, len(chunks) // 20)
        for i, (start, end) in enumerate(chunks):
            state, sums = self._executables[end - start](
                state,
                sums,
                self.images,
                self.labels,
                batches[..., start:end, :],
                self.dropout_key,
                self.values,
            )
            if progress is not None and len(chunks) > 1 and (i + 1) % report_every == 0:
                jax.block_until_ready(sums)
                progress(end)
        if progress is not None:
            progress(None)
        return state, sums


def eval_batches(num_examples: int, batch_size: int, num_devices: int = 1) -> tuple[int, int]:
    """(batches, examples per batch) of an evaluation split: batches of at most the split, rounded up
    to split evenly over the devices; the last one padded."""
    batch_size = math.ceil(max(1, min(batch_size, num_examples)) / num_devices) * num_devices
    return math.ceil(num_examples / batch_size), batch_size


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """An evaluation split on the device as `(images, labels, mask)` per evaluation call, padded to
    whole batches with a mask of real examples."""

    calls: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]
    # Where the calls live; the sums start there too, so every call finds the arguments the
    # first one compiled for (host zeros would compile a second program for the later calls).
    placement: DataParallel
    num_examples: int

    @property
    def call_shape(self) -> tuple[int, ...]:
        """The images' shape of one call: splits of one call shape share one compiled program."""
        return self.calls[0][0].shape

    @classmethod
    def create(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        placement: DataParallel,
        batches_per_call: int | None = None,
    ) -> EvalSet:
        """Batches of `batch_size` (at most the split, rounded up to split evenly over the devices),
        `batches_per_call` (default all) per call; the last call padded."""
        n = len(labels)
        num_batches, batch_size = eval_batches(n, batch_size, placement.num_devices)
        batches_per_call = batches_per_call or num_batches
        shape = (math.ceil(num_batches / batches_per_call), batches_per_call, batch_size)
        pad = math.prod(shape) - n
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
        mask = np.arange(math.prod(shape)) < n
        arrays = (
            images.reshape(*shape, *images.shape[1:]),
            labels.reshape(shape),
            mask.reshape(shape),
        )
        return cls(
            tuple(
                placement.put(tuple(a[i] for a in arrays), placement.split(1))
                for i in range(shape[0])
            ),
            placement,
            n,
        )

    @classmethod
    def create_all(
        cls,
        splits: dict[str, tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        placement: DataParallel,
    ) -> dict[str, EvalSet]:
        """`create` for each named (images, labels) split, in calls of one shape where the batch sizes
        agree, so that one compiled program evaluates them all (validation 20 and test 40 batches:
        20 per call, one compile less); see `batches_per_call`."""
        shapes = {
            name: eval_batches(len(labels), batch_size, placement.num_devices)
            for name, (_, labels) in splits.items()
        }
        per_call = {
            name: batches_per_call([b for b, size in shapes.values() if size == shapes[name][1]])
            for name in splits
        }
        return {
            name: cls.create(images, labels, batch_size, placement, per_call[name])
            for name, (images, labels) in splits.items()
        }


def batches_per_call(batch_counts: list[int]) -> int:
    """Batches per evaluation call for splits of `batch_counts` batches that share one program: the
    fewest padded batches plus calls (a call costs about a batch to dispatch). A common divisor
    pads nothing but can mean hundreds of tiny calls (58,000 and 10,000 examples in batches of 256:
    227 + 40 calls), which XLA:CPU's collectives over 8 simulated devices deadlock on."""

    def cost(k: int) -> int:
        return sum(math.ceil(b / k) * (k + 1) - b for b in batch_counts)

    return min(range(1, max(batch_counts) + 1), key=cost)
