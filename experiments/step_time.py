"""Seconds per training step of any config on this machine, and what its whole run would take.

Check before a long run whether it fits here (CPU) or needs the GPU machine:

    python -m experiments.step_time --config=configs/resnet.py
    python -m experiments.step_time --config=configs/resnet.py --config.model.stage_channels='(32,64,128)' --steps=32

Times the config's own compiled step (model, optimizer, augmentation, EMA, seeds, steps per call
as `train` plans them) on random images, after one warm-up pass over the same steps. Evaluation
and checkpoints are not counted.
"""

from __future__ import annotations

import dataclasses
import time

import jax
from absl import flags
from ml_collections import ConfigDict, config_flags

from fmnist_jax import cli, data
from fmnist_jax import config as config_lib
from fmnist_jax.config import checks as config_checks
from fmnist_jax.engine import program as program_lib
from fmnist_jax.reports import tables
from fmnist_jax.shapes import IMAGE_SHAPE

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cnn.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 16, "Training steps timed (after as many warm-up steps).")


@dataclasses.dataclass(frozen=True)
class StepTime:
    num_params: int
    compile_seconds: float
    step_seconds: float
    images_per_step: int  # batch_size x num_seeds
    steps_per_epoch: int
    num_epochs: int

    @property
    def images_per_second(self) -> float:
        return self.images_per_step / self.step_seconds

    @property
    def epoch_seconds(self) -> float:
        return self.step_seconds * self.steps_per_epoch

    @property
    def run_seconds(self) -> float:
        return self.epoch_seconds * self.num_epochs


def measure(config: ConfigDict, num_steps: int) -> StepTime:
    """Compiles `config`'s training step and times `num_steps` steps after as many warm-up steps."""
    config_checks.validate(config)
    steps_per_epoch = config_lib.num_train_examples(config) // config.batch_size
    splits = data.random_splits(num_steps * config.batch_size, config.batch_size)
    program = program_lib.build(config, splits)
    state, compile_seconds = program.compile()
    runner = program.runner
    state, sums = runner.train_epoch(state, 0)  # warm-up
    jax.block_until_ready(sums)
    start = time.perf_counter()
    state, sums = runner.train_epoch(state, 1)
    jax.block_until_ready(sums)
    step_seconds = (time.perf_counter() - start) / num_steps
    return StepTime(
        num_params=tables.model_table(program.model, IMAGE_SHAPE)[1],
        compile_seconds=compile_seconds,
        step_seconds=step_seconds,
        images_per_step=config.batch_size * config.num_seeds,
        steps_per_epoch=steps_per_epoch,
        num_epochs=config.num_epochs,
    )


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.1f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.2f} h"
    )


def _report() -> None:
    config = _CONFIG.value
    t = measure(config, _STEPS.value)
    print(
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {t.num_params:,} parameters, "
        f"batch {config.batch_size}, {config.num_seeds} seed(s): compiled in {t.compile_seconds:.1f} s; "
        f"{1000 * t.step_seconds:.1f} ms/step, {t.images_per_second:,.0f} ex/s; "
        f"{t.steps_per_epoch} steps/epoch -> {_duration(t.epoch_seconds)}/epoch, {config.num_epochs} epochs -> {_duration(t.run_seconds)}"
    )


if __name__ == "__main__":
    cli.main(_report)
