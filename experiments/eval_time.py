"""Seconds per validation of a config at several evaluation batch sizes, on this backend.

    python -m experiments.eval_time [--config=configs/cnn.py] [--batch_sizes=1000,500,250,100]

Every epoch ends with a validation and a run with a test evaluation: on a CPU they cost as much as
a good part of the training of a small model. `eval_batch_size` 0 (the default) picks 250 on CPU
and 1000 elsewhere (`engine.eval_batch_size`); this measures that choice on any machine. For each
batch size: the first evaluation of both splits (it compiles the program), then the best of three
validations of the config's initial weights (random images in the run's shapes).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from fmnist_jax import config as config_lib
from fmnist_jax import data, engine
from fmnist_jax import program as program_lib

_NUM_TEST = 10_000


@dataclasses.dataclass(frozen=True)
class EvalTime:
    batch_size: int
    compile_seconds: float  # the first evaluation of both splits, compiling included
    validation_seconds: float  # best of three


def measure(config: ConfigDict, batch_sizes: list[int]) -> list[EvalTime]:
    config_lib.validate(config)
    num_validation = config.data.num_validation
    splits = data.random_splits(config.batch_size, _NUM_TEST, num_validation=num_validation)
    times = []
    for batch_size in batch_sizes:
        config = config_lib.with_values(config, {"eval_batch_size": batch_size})
        program = program_lib.build(config, splits)
        weights = program.initial_state().weights()
        start = time.perf_counter()
        jax.block_until_ready([program.evaluate(weights, split) for split in program.eval_sets])
        compile_seconds = time.perf_counter() - start
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(program.evaluate(weights, "val"))
            runs.append(time.perf_counter() - start)
        times.append(EvalTime(batch_size, compile_seconds, min(runs)))
    return times


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    batch_sizes = [int(b) for b in flags.FLAGS.batch_sizes]
    print(
        f"{config.model.name}: backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), jax "
        f"{jax.__version__}; automatic batch here: "
        f"{engine.eval_batch_size(0, jax.default_backend())}"
    )
    print(
        f"| eval batch | first evaluation of both splits (compiles), s | "
        f"{config.data.num_validation} validation images, ms |\n| --- | --- | --- |"
    )
    for t in measure(config, batch_sizes):
        print(f"| {t.batch_size} | {t.compile_seconds:.2f} | {1e3 * t.validation_seconds:.1f} |")


if __name__ == "__main__":
    # Defined here, not at import: tests import this module beside the other experiments.
    config_flags.DEFINE_config_file("config", "configs/cnn.py", "Config file.")
    flags.DEFINE_list("batch_sizes", ["1000", "500", "250", "100"], "Evaluation batch sizes.")
    app.run(main)
