"""What a first run of a config compiles on this backend, program by program.

    python -m experiments.compile_time [--config=configs/mlp.py] [--config.key=value ...]

A run whose programs are not in the compilation cache yet waits for XLA to compile them: the seed
keys, the initial state, the shuffle, the training call(s) and the evaluation (whose test
probabilities the reports draw). This compiles each alone (tracing included, the persistent
cache off; random images in the run's shapes), then all of `Program.compile()` again from empty
in-memory caches as a run calls it, where the training programs compile beside the initial state
and the evaluation: the difference is what compiling them side by side saves on this machine.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags
from ml_collections import config_flags

from fmnist_jax import config as config_lib
from fmnist_jax import data
from fmnist_jax.config import checks as config_checks
from fmnist_jax.config import run_axis
from fmnist_jax.engine import initial_state
from fmnist_jax.engine import program as program_lib

_NUM_TEST = 10_000


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(fn's result once computed, wall seconds, CPU seconds of the whole process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = jax.block_until_ready(fn())
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_shaped_splits(config) -> data.Splits:
    """Random images in the shapes of a run of `config`: its training, validation and test sizes."""
    return data.random_splits(
        config_lib.num_train_examples(config), _NUM_TEST, num_validation=config.data.num_validation
    )


def alone(config, splits: data.Splits) -> list[tuple[str, float, float]]:
    """(program, wall s, CPU s) of each program compiled on its own, in the order a run needs them."""
    rows = []

    def row(name: str, fn: Callable[[], Any]) -> Any:
        result, wall, cpu = timed(fn)
        rows.append((name, wall, cpu))
        return result

    row("seed keys", lambda: initial_state.seed_keys(list(run_axis.RunAxis.of(config).seeds)))
    program = program_lib.build(config, splits)
    state = row("initial state", program.initial_state)
    row("shuffle", lambda: program.runner.batches(0))
    row("training call(s)", lambda: program.runner.compile(state))
    for split in program.eval_sets:
        row(f"evaluation ({split})", lambda s=split: program.evaluate(state.weights(), s))
    return rows


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    config_checks.validate(config)
    jax.config.update("jax_enable_compilation_cache", False)
    splits = run_shaped_splits(config)
    print(
        f"{config.model.name}: backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__}"
    )
    rows = alone(config, splits)
    print("| program | compiled alone: wall s | CPU s |\n| --- | --- | --- |")
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    print(
        f"| all of them, one after another | {sum(r[1] for r in rows):.2f} | "
        f"{sum(r[2] for r in rows):.2f} |"
    )
    in_compile = [r for r in rows if r[0] != "seed keys"]
    jax.clear_caches()
    program = program_lib.build(config, splits)
    _, wall, cpu = timed(program.compile)
    print(
        f"`Program.compile()` from empty in-memory caches: {wall:.2f} s wall, {cpu:.2f} s CPU "
        f"(its programs one after another: {sum(r[1] for r in in_compile):.2f} s)"
    )


if __name__ == "__main__":
    # Defined here, not at import: tests import this module beside `step_time`, which has its own.
    config_flags.DEFINE_config_file("config", "configs/mlp.py", "Config file.")
    app.run(main)
