"""Data parallelism on JAX's own runtime: 8 simulated CPU devices, and 2 processes on localhost.

Each run is a fresh `python -m fmnist_jax.main` process, because the device count and the
multi-process runtime are fixed when JAX starts.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The reference MLP with dropout, so that the dropout RNG is checked too, for one short epoch
# (2,000 training examples, 62 steps): too short for float rounding, which partitioned sums change,
# to grow (over a whole epoch it reaches ~0.3% of the loss with dropout), while a dropout mask or
# batch that depended on the device count would change the loss at once.
ARGS = [
    "--config=configs/mlp.py",
    "--config.num_epochs=1",
    "--config.model.dropout_rate=0.2",
    "--config.data.num_validation=58000",
    "--config.checkpoint.asynchronous=False",
    "--config.plots=False",
]
TOLERANCE = 1e-4  # relative, on the test loss


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(workdir, tfds_dir, *extra, devices=1):
    command = [
        sys.executable,
        "-m",
        "fmnist_jax.main",
        f"--workdir={workdir}",
        *ARGS,
        f"--config.data.tfds_data_dir={tfds_dir}",
        *extra,
    ]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def _summary(workdir):
    return json.loads((workdir / "summary.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_device(prepared_tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_device")
    code, output = _finish(_start(workdir, prepared_tfds_dir))
    assert code == 0, output
    return _summary(workdir)


@pytest.mark.slow
def test_eight_devices_give_the_one_device_result(one_device, prepared_tfds_dir, tmp_path):
    code, output = _finish(_start(tmp_path, prepared_tfds_dir, devices=8))
    assert code == 0, output
    eight = _summary(tmp_path)
    assert (one_device["devices"], eight["devices"]) == (1, 8)
    assert abs(eight["test_loss"] - one_device["test_loss"]) / one_device["test_loss"] < TOLERANCE
    assert abs(eight["test_accuracy"] - one_device["test_accuracy"]) <= 0.002


@pytest.mark.slow
def test_two_processes_on_localhost_train_like_one(one_device, prepared_tfds_dir, tmp_path):
    address = f"localhost:{_free_port()}"
    processes = [
        _start(
            tmp_path,
            prepared_tfds_dir,
            f"--config.distributed.coordinator_address={address}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}",
        )
        for i in range(2)
    ]
    results = [_finish(p) for p in processes]
    for code, output in results:
        assert code == 0, output
    two = _summary(tmp_path)  # written by process 0 only
    assert two["devices"] == 2
    assert abs(two["test_loss"] - one_device["test_loss"]) / one_device["test_loss"] < TOLERANCE
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert (
        f"PID {processes[0].pid}," in (tmp_path / ".lock").read_text()
    )  # process 0 holds the workdir's lock; the others only read


def test_batch_that_does_not_split_over_the_devices_is_a_clear_error(prepared_tfds_dir, tmp_path):
    code, output = _finish(_start(tmp_path, prepared_tfds_dir, "--config.batch_size=30", devices=8))
    assert code != 0
    assert "batch_size=30 does not split evenly over 8 devices; use a multiple of 8" in output
    assert "Traceback" not in output


def _distributed(address, num_processes, process_id, timeout=3):
    return (
        f"--config.distributed.coordinator_address={address}",
        f"--config.distributed.num_processes={num_processes}",
        f"--config.distributed.process_id={process_id}",
        f"--config.distributed.timeout_seconds={timeout}",
    )


@pytest.mark.slow
def test_unreachable_coordinator_is_a_clear_error_after_the_timeout(prepared_tfds_dir, tmp_path):
    start = time.monotonic()
    code, output = _finish(
        _start(tmp_path, prepared_tfds_dir, *_distributed(f"localhost:{_free_port()}", 2, 1)),
        timeout=120,
    )
    assert code == 1, output
    assert (
        "Could not join the multi-host run at distributed.coordinator_address='localhost:" in output
    )
    assert "as process 1 of 2 within 3 s" in output and "Traceback" not in output
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_missing_process_is_a_clear_error_on_the_coordinator(prepared_tfds_dir, tmp_path):
    code, output = _finish(
        _start(tmp_path, prepared_tfds_dir, *_distributed(f"localhost:{_free_port()}", 3, 0)),
        timeout=120,
    )
    assert code == 1, output
    assert (
        "only 1 of 3 processes joined within 3 s (missing process_id [1, 2])" in output
        and "Traceback" not in output
    )


@pytest.mark.slow
def test_mismatched_process_count_stops_every_process(prepared_tfds_dir, tmp_path):
    address = f"localhost:{_free_port()}"
    processes = [
        _start(tmp_path, prepared_tfds_dir, *_distributed(address, n, i, timeout=30))
        for i, n in ((0, 2), (1, 3))
    ]
    for code, output in [_finish(p, timeout=120) for p in processes]:
        assert code == 1, output
        assert (
            "process 1 says num_processes=3, process 0 says 2" in output
            and "Traceback" not in output
        )
