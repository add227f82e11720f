"""Experiment tools that users run before or beside training."""

import json
import subprocess
import sys

import pytest
from conftest import tiny_cli_args

from experiments import compile_time, eval_time, step_time


def test_step_time_times_the_configs_own_step_and_projects_the_run(tiny_config):
    tiny_config.num_epochs = 3
    tiny_config.num_seeds = 2
    t = step_time.measure(tiny_config, num_steps=4)
    assert t.num_params == 784 * 16 + 16 + 16 * 10 + 10
    assert t.steps_per_epoch == (60_000 - 16) // 8
    assert 0 < t.step_seconds < 5 and t.compile_seconds > 0
    assert t.images_per_second == 8 * 2 / t.step_seconds
    assert t.run_seconds == t.step_seconds * t.steps_per_epoch * 3


def test_compile_time_compiles_each_program_of_a_run_in_the_runs_shapes(tiny_config):
    tiny_config.data.num_train = 1_000
    splits = compile_time.run_shaped_splits(tiny_config)
    assert [len(s) for s in (splits.train_labels, splits.val_labels, splits.test_labels)] == [
        1_000,
        16,
        10_000,
    ]
    rows = compile_time.alone(tiny_config, splits)
    assert [name for name, _, _ in rows] == [
        "seed keys",
        "initial state",
        "shuffle",
        "training call(s)",
        "evaluation (test)",
        "evaluation (val)",
    ]
    assert all(wall > 0 and cpu >= 0 for _, wall, cpu in rows)


def test_eval_time_evaluates_the_validation_at_each_batch_size(tiny_config):
    times = eval_time.measure(tiny_config, [4, 16])
    assert [t.batch_size for t in times] == [4, 16]
    assert all(t.compile_seconds > t.validation_seconds > 0 for t in times)


def _compare(tfds_dir, root, *variants):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.compare",
            *tiny_cli_args(tfds_dir, 1),
            "--seeds=1",
            f"--workdir_root={root}",
            *(f"--variant={v}" for v in variants),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_compare_checks_every_variant_before_training_any(mock_tfds_dir, tmp_path):
    refused = _compare(
        mock_tfds_dir, tmp_path, "a:optimizer.learning_rate=1e-3", "b:optimizer.momentum=0.9"
    )
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 1 and len(errors) == 1, refused.stderr[-2000:]
    assert "Variant 'b': optimizer.momentum does nothing" in errors[0]
    assert not list(tmp_path.iterdir())  # variant a did not train first

    compared = _compare(
        mock_tfds_dir,
        tmp_path,
        "lr 1e-3:optimizer.learning_rate=1e-3",
        "lr 3e-3:optimizer.learning_rate=3e-3",
    )
    assert compared.returncode == 0, compared.stderr[-2000:]
    rows = [line for line in compared.stdout.splitlines() if line.startswith("| lr ")]
    assert len(rows) == 2 and "±" not in compared.stdout  # one seed: no spread to show
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_optuna_loop_peer_runs_the_same_search_as_single_runs(mock_tfds_dir, tmp_path):
    """experiments/benchmark/optuna_loop.py: Optuna's TPE and Hyperband pruner over single runs,
    then the slot population's search, and one JSON line comparing them."""
    command = [
        sys.executable,
        "-m",
        "experiments.benchmark.optuna_loop",
        "--config=configs/search_mlp.py",
        f"--workdir={tmp_path}",
        f"--config.data.tfds_data_dir={mock_tfds_dir}",
        "--config.data.num_validation=16",
        "--config.batch_size=8",
        "--config.eval_batch_size=16",
        "--config.plots=False",
        "--config.search.trials=3",
        "--config.search.max_epochs=2",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["trials"] == 3 and 3 <= line["optuna_trial_epochs"] <= 6
    assert 3 <= line["population_trial_epochs"] <= 6
    assert 0 < line["optuna_best"] <= 1 and 0 < line["population_best"] <= 1
    assert line["speedup"] == pytest.approx(
        line["optuna_seconds"] / line["population_search_seconds"]
    )
    assert (tmp_path / "search.json").exists()
