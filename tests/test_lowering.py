"""Every config's programs build for GPU and TPU, with those backends' choices, on this CPU-only machine."""

import importlib
import pathlib

import pytest

from fmnist_jax.engine import backend
from fmnist_jax.engine import program as program_lib

CONFIGS = sorted(
    p.stem
    for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
    if p.stem != "__init__"
)


def _config(name, num_seeds=1):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.num_seeds = num_seeds
    return config


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name", CONFIGS)
def test_training_and_evaluation_lower_for_accelerators(name, platform):
    config = _config(name)
    lowered = {
        kind: program.as_text() for kind, program in program_lib.lower_for(config, platform).items()
    }
    steps_per_epoch = 55_000 // config.batch_size
    # The whole epoch is one rolled loop: no CPU chunking or unrolling.
    assert f"tensor<{steps_per_epoch}x{config.batch_size}xi32>" in lowered["train"]
    assert "stablehlo.while" in lowered["train"] and "stablehlo.while" in lowered["eval"]
    if config.model.name == "cnn" and config.model.pooling == "max":
        # Native pooling (reduce_window, select-and-scatter gradient), not the CPU formulation.
        assert "reduce_window" in lowered["train"] and "select_and_scatter" in lowered["train"]
        assert "reduce_window" in lowered["eval"]
    assert backend.compiler_options(platform) is None


@pytest.mark.slow
def test_seeds_are_vmapped_on_accelerators_and_copied_on_cpu():
    config = _config("cnn", num_seeds=3)
    convolutions = {
        p: program_lib.lower_for(config, p)["train"].as_text().count("stablehlo.convolution")
        for p in ("cpu", "cuda")
    }
    assert convolutions["cuda"] * 3 == convolutions["cpu"]  # one batched copy vs one copy per seed
    cpu = program_lib.lower_for(_config("cnn"), "cpu")["train"].as_text()
    assert (
        "stablehlo.while" not in cpu and "reduce_window" not in cpu
    )  # unrolled chunks, CPU pooling
