"""Seconds per validation of a config at several evaluation batch sizes, on this backend.

    python -m experiments.eval_time [--config=configs/cnn.py] [--batch_sizes=1000,500,250,100]

Every epoch ends with a validation and a run with a test evaluation: on a CPU they cost as much as
a good part of the training of a small model. `eval_batch_size` 0 (the default) picks 250 on CPU
and 1000 elsewhere (`backend.eval_batch_size`); this measures that choice on any machine. For each
batch size: the first evaluation of both splits (it compiles the program), then the best of three
validations of the config's initial weights (random images in the run's shapes, as
`experiments.compile_time` makes them).
"""

from __future__ import annotations

import dataclasses
import os
import platform

import jax
from absl import app, flags
from ml_collections import ConfigDict, config_flags

from experiments import compile_time
from fmnist_jax import config as config_lib
from fmnist_jax import data
from fmnist_jax.config import checks as config_checks
from fmnist_jax.engine import backend
from fmnist_jax.engine import program as program_lib


@dataclasses.dataclass(frozen=True)
class EvalTime:
    batch_size: int
    compile_seconds: float  # the first evaluation of both splits, compiling included
    validation_seconds: float  # best of three


def measure(config: ConfigDict, batch_sizes: list[int]) -> list[EvalTime]:
    config_checks.validate(config)
    splits = compile_time.run_shaped_splits(config)
    return [_time(config, splits, batch_size) for batch_size in batch_sizes]


def _time(config: ConfigDict, splits: data.Splits, batch_size: int) -> EvalTime:
    config = config_lib.with_values(config, {"eval_batch_size": batch_size})
    program = program_lib.build(config, splits)
    weights = program.initial_state().weights()
    _, compile_seconds, _ = compile_time.timed(
        lambda: [program.evaluate(weights, split) for split in program.eval_sets]
    )
    runs = [compile_time.timed(lambda: program.evaluate(weights, "val"))[1] for _ in range(3)]
    return EvalTime(batch_size, compile_seconds, min(runs))


def main(argv: list[str]) -> None:
    del argv
    config = flags.FLAGS.config
    batch_sizes = [int(b) for b in flags.FLAGS.batch_sizes]
    print(
        f"{config.model.name}: backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), jax "
        f"{jax.__version__}; automatic batch here: "
        f"{backend.eval_batch_size(0, jax.default_backend())}"
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
