"""Data-parallel scaling: training examples/s of a config on 1, 2, 4, 8 devices of this host.

On a CPU the devices are simulated (`--xla_force_host_platform_device_count`), so they share the
same cores: expect no gain, the point is the overhead of the sharded program. On a GPU/TPU host
pass the real device counts (`--devices=1,2,4,8`, using the first N devices).

    python -m experiments.scaling [--config=configs/mlp.py] [--epochs=3] [--devices=1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples_per_second(
    config: str, epochs: int, devices: int, extra: list[str]
) -> tuple[float, float]:
    """(median examples/s over the epochs after the first, test accuracy) of one run on `devices` devices."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if env.get("JAX_PLATFORMS", "cpu") == "cpu":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable,
            "-m",
            "fmnist_jax.main",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.num_epochs={epochs}",
            *extra,
        ]
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
    assert summary["devices"] == devices, summary
    return statistics.median(r["examples_per_second"] for r in rows[1:] or rows), summary[
        "test_accuracy"
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/mlp.py")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--devices", default="1,2,4,8")
    args, extra = parser.parse_known_args()
    print("| devices | examples/s | vs 1 device | test accuracy |\n| --- | --- | --- | --- |")
    base = None
    for n in map(int, args.devices.split(",")):
        speed, accuracy = examples_per_second(args.config, args.epochs, n, extra)
        base = base or speed
        print(f"| {n} | {speed:,.0f} | {speed / base:.2f}x | {accuracy:.4f} |", flush=True)


if __name__ == "__main__":
    main()
