"""The choices that depend on the backend a run compiles for.

Each function answers one question (how many steps per compiled call, how large an evaluation
batch, how runs share a program, which XLA options) from the backend's name and the model's kind,
so the step math (`engine`) and the runner (`runner`) stay the same on CPU, GPU and TPU. The
measurements behind each choice are in docs/benchmarks.md ("Backend choices"), each with the
experiment that reproduces it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax.models import Model

# XLA:CPU's optimization passes cost more compile time than they save in a program that runs once
# (the seed keys, the initial state) or whose time goes to a sort (the epoch's shuffle).
_UNOPTIMIZED_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": "0"}}
# A program that runs once also takes XLA:CPU's older loop emitters, which generate code faster
# with bit-identical results. Programs run every step keep the fusion emitters, whose code is faster.
_ONCE_COMPILER_OPTIONS = {
    "cpu": {**_UNOPTIMIZED_COMPILER_OPTIONS["cpu"], "xla_cpu_use_fusion_emitters": False}
}
# A run shorter than this many steps calls conv models on CPU one step at a time: compiling an
# unrolled call of 8 steps costs more than it saves over so few steps (experiments/step_loops.py).
_SHORT_RUN_STEPS = 256


def jit_unoptimized(
    fn: Callable[..., Any], runs_once: bool = False, **jit_options: Any
) -> Callable[..., Any]:
    """`jax.jit` compiled without XLA:CPU's optimization passes: for initialization, the seed keys
    and the shuffle, whose compile time the passes would lengthen more than they shorten any run;
    `runs_once` (the seed keys, the initial state) also with the loop emitters."""
    options = _ONCE_COMPILER_OPTIONS if runs_once else _UNOPTIMIZED_COMPILER_OPTIONS
    return jax.jit(fn, compiler_options=options.get(jax.default_backend()), **jit_options)


def uses_convolution(model: Model, image_shape: tuple[int, ...]) -> bool:
    """Whether the model's forward pass contains a convolution (read from its jaxpr, nothing runs)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(model.apply)(model.shapes(), x)
    return "conv_general_dilated" in str(jaxpr)


def plan_calls(
    steps_per_call: int, backend: str, has_convolution: bool, run_steps: int
) -> tuple[int, bool]:
    """(steps per compiled call, whether to unroll them) for a run of `run_steps` training steps;
    `steps_per_call` 0 means choose.

    XLA:CPU runs a convolution inside a rolled loop many times slower than outside one, so on CPU
    conv models run unrolled calls of 8 steps, or of one step in a short run. Everything else runs
    a whole epoch as one rolled scan, which is fastest where the loop costs nothing extra
    (experiments/step_loops.py compares them).
    """
    if backend == "cpu" and has_convolution:
        return steps_per_call or (8 if run_steps >= _SHORT_RUN_STEPS else 1), True
    return steps_per_call or 2**31 - 1, False


def eval_batch_size(requested: int, backend: str) -> int:
    """Examples per evaluation batch; `requested` 0 means choose.

    On XLA:CPU a batch's activations should stay in the cores' caches, so batches are small (250
    divides both splits); GPUs and TPUs keep large batches (experiments/eval_time.py).
    """
    return requested or (250 if backend == "cpu" else 1000)


def seed_loop(backend: str, has_convolution: bool) -> bool:
    """Whether several runs share a program as one copy of the step per run instead of `jax.vmap`.

    vmap turns a convolution over per-run weights into a grouped convolution, which XLA:CPU runs
    far slower than separate ones (experiments/sweep_speed.py).
    """
    return backend == "cpu" and has_convolution


def compiler_options(backend: str) -> dict[str, str] | None:
    """XLA options for the train and eval programs of `backend`.

    On XLA:CPU, YNNPACK's convolutions are slower than Eigen's, so YNNPACK is kept for reductions
    only, where this XLA has YNNPACK at all (older jaxlibs have not).
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
