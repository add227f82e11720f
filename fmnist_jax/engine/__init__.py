"""The engine: everything a run compiles. Here the step math; beside it the optimizers (`optim`),
augmentation (`augment`), input normalization (`normalizer`), initial states (`initial_state`),
running the steps on devices (`runner`, `distributed`, `memory`), the backend's choices
(`backend`), and the one trip that builds them all for a config (`program`).

The math of training and evaluation, as pure functions over explicit state.

The train state, the loss, one training step, a call's scan of steps and the evaluation of
batches (the state runs start from is `initial_state`'s). Every function here sees one run;
`Engine.over_runs` maps it over the run axis (seeds and sweep members). Running these on devices
is `runner`'s job, and the choices that depend on the backend are `backend`'s.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax.engine.augment import Augment
from fmnist_jax.engine.normalizer import Normalizer
from fmnist_jax.models import Model
from fmnist_jax.records import metrics as metrics_lib
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

    @classmethod
    def restored(cls, weights: dict[str, PyTree], train: dict[str, PyTree]) -> TrainState:
        """The state a checkpoint holds: its `weights()` and its train item's step and optimizer
        state."""
        return cls(
            step=train["step"],
            params=weights["params"],
            batch_stats=weights["batch_stats"],
            opt_state=train["opt_state"],
            ema_params=weights.get("ema_params", {}),
        )


def eval_params(weights: dict[str, PyTree]) -> PyTree:
    """The parameters to evaluate: the moving average when a run keeps one."""
    return weights.get("ema_params") or weights["params"]


@flax.struct.dataclass
class Sums:
    """Per-epoch sums kept on the device: the loss and each metric of `metrics.METRICS`;
    `first_nonfinite_step` is -1 while every loss is finite."""

    loss: jax.Array
    metrics: dict[str, jax.Array]
    count: jax.Array
    first_nonfinite_step: jax.Array

    @classmethod
    def zeros(cls, num_runs: int) -> Sums:
        shape = (num_runs,)  # NumPy: no compiled op just to make zeros
        return cls(
            loss=np.zeros(shape, np.float32),
            metrics={name: np.zeros(shape, np.float32) for name in metrics_lib.METRICS},
            count=np.zeros(shape, np.int32),
            first_nonfinite_step=np.full(shape, -1, np.int32),
        )

    def add(
        self, loss: jax.Array, logits: jax.Array, labels: jax.Array, mask: jax.Array | bool = True
    ) -> Sums:
        """These sums plus a batch's: its summed `loss`, and the metrics of the examples `mask`
        marks."""
        batch = metrics_lib.sums(logits, labels, mask)
        return self.replace(
            loss=self.loss + loss,
            metrics={name: total + batch[name] for name, total in self.metrics.items()},
            count=self.count + jnp.sum(jnp.broadcast_to(mask, labels.shape)),
        )

    def per_run(self) -> list[dict[str, float]]:
        """Host values, read in one transfer: per run the mean loss and metrics, and the first
        non-finite step."""
        loss, totals, count, bad_step = jax.device_get(
            (self.loss, self.metrics, self.count, self.first_nonfinite_step)
        )
        return [
            {
                "loss": float(loss[r]) / max(int(count[r]), 1),
                **{name: float(t[r]) / max(int(count[r]), 1) for name, t in totals.items()},
                "first_nonfinite_step": int(bad_step[r]),
            }
            for r in range(len(count))
        ]


def variables(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    return {"params": params, "batch_stats": batch_stats}


def model_settings(values: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The model settings among a run's values ("model.dropout_rate" -> "dropout_rate")."""
    return {k.removeprefix("model."): v for k, v in values.items() if k.startswith("model.")}


def select_run(tree: PyTree, index: int) -> PyTree:
    """One run's slice of a tree with a leading run axis."""
    return jax.tree.map(lambda a: a[index], tree)


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


def moving_average(average: PyTree, params: PyTree, decay: jax.Array, step: jax.Array) -> PyTree:
    """The weights' moving average after `step`, with TensorFlow's ExponentialMovingAverage
    warm-up: early steps average over fewer steps."""
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, average, params)


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
    # The optimizer of a run's values (see `fmnist_jax.engine.optim.optimizer`).
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
        settings = model_settings(values)

        def loss_fn(params):
            logits, batch_stats = self.model.apply(
                # Batch-norm statistics stay float32: bfloat16 cannot hold their 1% updates.
                variables(self._compute(params), state.batch_stats),
                self._compute(x),
                train=True,
                dropout_key=model_key,
                settings=settings,
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
            decay = values.get("ema_decay", self.ema_decay)
            ema_params = moving_average(ema_params, params, decay, state.step)
        finite = jnp.isfinite(loss)
        sums = sums.add(loss * labels.shape[0], logits, labels).replace(
            first_nonfinite_step=jnp.where(
                (sums.first_nonfinite_step < 0) & ~finite, state.step, sums.first_nonfinite_step
            )
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
            # convolution in a loop many times slower (see `backend.plan_calls`).
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
            loss = jnp.sum(jnp.where(m, cross_entropy(logits, y, 0.0), 0.0))
            return sums.add(loss, logits, y, m), jnp.exp(logits)

        return jax.lax.scan(body, sums, (images, labels, mask))

    def train_program(self) -> Callable[..., tuple[TrainState, Sums]]:
        """`train_steps` over every run: (state, sums, images, labels, batch_indices, dropout_key, values)."""
        return self.over_runs(self.train_steps, in_axes=(0, 0, None, None, 0, 0, 0))

    def eval_program(self) -> Callable[..., tuple[Sums, jax.Array]]:
        """`eval_sums` over every run: (params, batch_stats, sums, images, labels, mask)."""
        return self.over_runs(self.eval_sums, in_axes=(0, 0, 0, None, None, None))

    @functools.cached_property
    def compiled_eval_sums(self) -> Callable[..., tuple[Sums, jax.Array]]:
        """`eval_program` compiled, once per engine (evaluations of every split share it)."""
        return jax.jit(self.eval_program(), compiler_options=self.compiler_options)
