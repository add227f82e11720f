"""Running the step math on devices: training epochs and evaluation splits.

`EpochRunner` keeps the training data on the devices as uint8 for the whole run, compiles each
call length an epoch uses once, and runs an epoch as its shuffle and then the calls, with loss and
accuracy summed on the device: the host only enqueues calls, and reads nothing back until the epoch
ends. `EvalSet` holds an evaluation split on the devices in whole batches, and `evaluate` runs
the engine's evaluation over it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax.engine import Engine, Sums, TrainState, eval_params
from fmnist_jax.engine.backend import jit_unoptimized
from fmnist_jax.engine.distributed import Placement, fetch
from fmnist_jax.shapes import PyTree


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


def evaluate(engine: Engine, weights: dict[str, PyTree], split: EvalSet) -> Evaluation:
    """`weights`' (see `TrainState.weights`) evaluation of `split`, per run, left on the devices."""
    sums = split.placement.put(Sums.zeros(engine.num_runs))
    probabilities = []
    for images, labels, mask in split.calls:
        sums, call_probabilities = engine.compiled_eval_sums(
            eval_params(weights), weights["batch_stats"], sums, images, labels, mask
        )
        probabilities.append(call_probabilities)
    return Evaluation(sums, tuple(probabilities), split.num_examples)


def epoch_batches(
    key: jax.Array, epoch: jax.Array, num_examples: int, num_steps: int, batch_size: int
) -> jax.Array:
    """Epoch `epoch`'s shuffle of the training indices as `[num_steps, batch_size]`; the remainder is left out."""
    order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return order[: num_steps * batch_size].reshape(num_steps, batch_size)


_BATCH_AXIS = 2  # of the batch indices [run, step, example]: the axis split over the devices


@dataclasses.dataclass
class EpochRunner:
    """Runs training epochs over device-resident data with ahead-of-time compiled step chunks.

    The data is replicated on `placement`'s mesh, the runs' keys and values split over its `runs`
    axis and each batch over its `data` axis (see `fmnist_jax.engine.distributed`); on one device that is
    plain single-device training.
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
    placement: Placement = dataclasses.field(default_factory=Placement.over_all_devices)
    # Compiled training calls by length; a `dataclasses.replace` copy starts with none.
    _executables: dict[int, Any] = dataclasses.field(default_factory=dict, init=False)

    def __post_init__(self):
        self.placement.check_batch("batch_size", self.batch_size)
        self.images, self.labels = self.placement.put(
            (self.images, self.labels), self.placement.replicated
        )
        self.shuffle_key, self.dropout_key, self.values = self.placement.put(
            (self.shuffle_key, self.dropout_key, self.values)
        )
        shuffle = functools.partial(
            epoch_batches,
            num_examples=len(self.labels),
            num_steps=self.steps_per_epoch,
            batch_size=self.batch_size,
        )
        self._shuffle = jit_unoptimized(
            self.engine.over_runs(shuffle, in_axes=(0, 0)),
            out_shardings=self.placement.split(_BATCH_AXIS, run_axis=True),
        )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.labels) // self.batch_size

    def _chunks(self) -> list[tuple[int, int]]:
        """The epoch's calls as (first step, end): whole calls of `steps_per_call`, then the
        remainder one step at a time, whose program compiles faster than one of the remainder's
        length (see docs/benchmarks.md, "Backend choices")."""
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

    def batches(self, epoch: int | np.ndarray) -> jax.Array:
        """Epoch `epoch`'s shuffled batches of training indices, `[num_runs, steps, batch]`; each
        run's own epoch where `epoch` is `[num_runs]` (a search's slots)."""
        epochs = np.broadcast_to(np.asarray(epoch, np.int32), (self.engine.num_runs,))
        return self._shuffle(self.shuffle_key, self.placement.put(epochs))

    def _zeros(self) -> Sums:
        return self.placement.put(Sums.zeros(self.engine.num_runs))

    def _executable(self, state: TrainState, length: int) -> Any:
        if length not in self._executables:
            jitted = jax.jit(
                self.engine.train_program(),
                donate_argnums=(0, 1),
                out_shardings=self.placement.per_run,  # as they came: the next call's arguments
            )
            indices = jax.ShapeDtypeStruct(
                (self.engine.num_runs, length, self.batch_size),
                jnp.int32,
                sharding=self.placement.split(_BATCH_AXIS, run_axis=True),
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

    def train_epoch(
        self,
        state: TrainState,
        epoch: int | np.ndarray,
        progress: Callable[[int | None], None] | None = None,
    ) -> tuple[TrainState, Sums]:
        """Epoch `epoch` (each run's own, `[num_runs]`) in its own shuffled order; returns without
        waiting for the devices.

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
    placement: Placement
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
        placement: Placement,
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
        placement: Placement,
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
