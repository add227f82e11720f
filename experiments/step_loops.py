"""Measures how the training steps of an epoch should be looped on this backend.

For each reference model (MLP, CNN): ms per step for a whole epoch as one rolled `lax.scan`, for calls of 8
unrolled steps, for those with XLA's default options instead of `backend.compiler_options`, and
(CNN) with the native pooling ops instead of the CPU formulation. This is the measurement behind
`fmnist_jax.engine.backend.plan_calls`, `backend.compiler_options` and `models.layers.pool`.

    python -m experiments.step_loops
    python -m experiments.step_loops --scan_unrolls=1,4,8,16

`--calls` measures instead calls of k unrolled steps of one config, with the compile time of
each call, the trade `backend.plan_calls` makes for conv models on CPU (8 steps per call, or 1 in
a short run):

    python -m experiments.step_loops --calls=1,8 --config=configs/fast.py --num_steps=32

`--scan_unrolls` measures instead the MLP's whole-epoch scan with k steps per loop iteration
(`lax.scan(..., unroll=k)`): on XLA:GPU every iteration of a rolled loop costs a few microseconds
beside the MLP's ~29 us step (WORKSPACE.md, 2026-11-24); on XLA:CPU k > 1 only compiles longer.
"""

import dataclasses
import time

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from configs import cnn, mlp
from fmnist_jax import config as config_lib
from fmnist_jax import data
from fmnist_jax.engine import backend
from fmnist_jax.engine import program as program_lib


def ms_per_step(
    config, steps_per_call: int, unroll: bool | int, num_steps: int, options: dict | None
) -> tuple[float, float]:
    """(ms per training step over one epoch after a warm-up epoch, seconds to compile the calls)."""
    splits = data.random_splits(num_steps * config.batch_size, 1)
    config = config_lib.with_values(config, {"steps_per_call": steps_per_call})
    program = program_lib.build(config, splits)
    eng = dataclasses.replace(program.engine, unroll=unroll, compiler_options=options)
    runner = dataclasses.replace(program.runner, engine=eng)
    state, _ = program.compile()
    start = time.perf_counter()
    runner.compile(state)
    compile_seconds = time.perf_counter() - start
    state, sums = runner.train_epoch(state, 0)  # warm-up epoch
    jax.block_until_ready(sums)
    start = time.perf_counter()
    state, sums = runner.train_epoch(state, 1)
    jax.block_until_ready(sums)
    return 1000 * (time.perf_counter() - start) / num_steps, compile_seconds


def loops(options: dict | None) -> None:
    for name, config, num_steps in (("mlp", mlp.get_config(), 1718), ("cnn", cnn.get_config(), 64)):
        rolled, _ = ms_per_step(config, 10**9, False, num_steps, options)
        unrolled, _ = ms_per_step(config, 8, True, num_steps, options)
        defaults, _ = ms_per_step(config, 8, True, num_steps, None)
        line = (
            f"{name} batch {config.batch_size}: rolled scan {rolled:.2f} ms/step, calls of 8 unrolled steps {unrolled:.2f} "
            f"ms/step, the same with XLA's default options {defaults:.2f} ms/step"
        )
        if name == "cnn":
            config.model.formulation = "native"
            native, _ = ms_per_step(config, 8, True, num_steps, options)
            line += f", with the native pooling ops {native:.2f} ms/step"
        print(line)


def scan_unrolls(unrolls: list[int], options: dict | None) -> None:
    for k in unrolls:
        step_ms, compile_seconds = ms_per_step(mlp.get_config(), 10**9, k, 1718, options)
        print(
            f"mlp batch 32, whole-epoch scan, unroll={k}: {1000 * step_ms:.1f} us/step "
            f"({1718 * step_ms / 1000:.3f} s per epoch), compiled in {compile_seconds:.2f} s"
        )


def calls(lengths: list[int], config: ConfigDict, num_steps: int, options: dict | None) -> None:
    for k in lengths:
        step_ms, compile_seconds = ms_per_step(config, k, True, num_steps, options)
        print(
            f"{config.model.name} batch {config.batch_size}, calls of {k} unrolled step(s): "
            f"{step_ms:.2f} ms/step, a call compiled in {compile_seconds:.2f} s"
        )


def main(argv: list[str]) -> None:
    del argv
    print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
    options = backend.compiler_options(jax.default_backend())
    if flags.FLAGS.calls:
        lengths = [int(k) for k in flags.FLAGS.calls]
        calls(lengths, flags.FLAGS.config, flags.FLAGS.num_steps, options)
    elif flags.FLAGS.scan_unrolls:
        scan_unrolls([int(k) for k in flags.FLAGS.scan_unrolls], options)
    else:
        loops(options)


if __name__ == "__main__":
    flags.DEFINE_list(
        "scan_unrolls", [], "k values: the MLP's whole-epoch scan with unroll=k only."
    )
    flags.DEFINE_list("calls", [], "k values: calls of k unrolled steps of --config only.")
    config_flags.DEFINE_config_file("config", "configs/cnn.py", "Config file, for --calls.")
    flags.DEFINE_integer("num_steps", 64, "Steps of the timed epoch, for --calls.")
    app.run(main)
