"""Measures how the training steps of an epoch should be looped on this backend.

For each reference model (MLP, CNN): ms per step for a whole epoch as one rolled `lax.scan`, for calls of 8
unrolled steps, for those with XLA's default options instead of `engine.compiler_options`, and
(CNN) with the native pooling ops instead of the CPU formulation. This is the measurement behind
`fmnist_jax.engine.plan_calls`, `engine.compiler_options` and `models.layers.pool`.

    python -m experiments.step_loops
"""

import dataclasses
import time

import jax

from configs import cnn, mlp
from fmnist_jax import data, engine
from fmnist_jax import program as program_lib


def ms_per_step(
    config, steps_per_call: int, unroll: bool, num_steps: int, options: dict | None
) -> float:
    splits = data.random_splits(num_steps * config.batch_size, 1)
    config.steps_per_call = steps_per_call
    program = program_lib.build(config, splits)
    eng = dataclasses.replace(program.engine, unroll=unroll, compiler_options=options)
    runner = dataclasses.replace(program.runner, engine=eng)
    state, _ = program.compile()
    runner.compile(state)
    state, sums = runner.run(state, 0)  # warm-up epoch
    jax.block_until_ready(sums)
    start = time.perf_counter()
    state, sums = runner.run(state, 1)
    jax.block_until_ready(sums)
    return 1000 * (time.perf_counter() - start) / num_steps


def main():
    print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
    options = engine.compiler_options(jax.default_backend())
    for name, config, num_steps in (("mlp", mlp.get_config(), 1718), ("cnn", cnn.get_config(), 64)):
        rolled = ms_per_step(config, 10**9, False, num_steps, options)
        unrolled = ms_per_step(config, 8, True, num_steps, options)
        defaults = ms_per_step(config, 8, True, num_steps, None)
        line = (
            f"{name} batch {config.batch_size}: rolled scan {rolled:.2f} ms/step, calls of 8 unrolled steps {unrolled:.2f} "
            f"ms/step, the same with XLA's default options {defaults:.2f} ms/step"
        )
        if name == "cnn":
            config.model.formulation = "native"
            line += f", with the native pooling ops {ms_per_step(config, 8, True, num_steps, options):.2f} ms/step"
        print(line)


if __name__ == "__main__":
    main()
