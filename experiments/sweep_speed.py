"""A sweep in one program against the same members trained one by one, end to end (wall clock).

    python -m experiments.sweep_speed [--config=configs/mlp.py] \
        [--learning_rates=1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2,2e-2] [--seeds=3] [--epochs=10]

Times, each with an empty XLA compilation cache (what a first sweep pays):
1. `python -m experiments.sweep` over the learning rates x seeds (one process, one compile);
2. `python -m experiments.compare` with one variant per learning rate, its seeds in one program
   (one process, a compile per learning rate);
3. one `python -m fmnist_jax.main` per learning rate and seed (a process and compile per run:
   what a notebook or a shell loop does).
Prints the wall seconds of each and the ratios, and how far the sweep's test accuracies are
from the single runs' (equal for short runs, see tests/test_sweep.py; over thousands of steps
the rounding of batched and unbatched matmuls grows into differences of a few 1e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _timed(command: list[str], cache_dir: str) -> float:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/mlp.py")
    parser.add_argument("--learning_rates", default="1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2,2e-2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    rates = args.learning_rates.split(",")
    common = [f"--config={args.config}", f"--config.num_epochs={args.epochs}"]
    python = [sys.executable, "-m"]
    with tempfile.TemporaryDirectory() as root:
        sweep_dir = os.path.join(root, "sweep")
        swept = _timed(
            [
                *python,
                "experiments.sweep",
                *common,
                f"--workdir={sweep_dir}",
                f"--grid=optimizer.learning_rate={args.learning_rates}",
                f"--seeds={args.seeds}",
            ],
            os.path.join(root, "cache_sweep"),
        )
        compared = _timed(
            [
                *python,
                "experiments.compare",
                *common,
                f"--workdir_root={os.path.join(root, 'compare')}",
                f"--seeds={args.seeds}",
                *(f"--variant=lr {r}:optimizer.learning_rate={r}" for r in rates),
            ],
            os.path.join(root, "cache_compare"),
        )
        singles, accuracies = 0.0, []
        for r in rates:
            for s in range(args.seeds):
                workdir = os.path.join(root, f"single_{r}_{s}")
                singles += _timed(
                    [
                        *python,
                        "fmnist_jax.main",
                        *common,
                        f"--workdir={workdir}",
                        f"--config.optimizer.learning_rate={r}",
                        f"--config.seed={s}",
                    ],
                    os.path.join(root, "cache_singles"),
                )
                with open(os.path.join(workdir, "summary.json")) as f:
                    accuracies.append(json.load(f)["test_accuracy"])
        with open(os.path.join(sweep_dir, "sweep.json")) as f:
            result = json.load(f)
    swept_accuracies = [a for m in result["members"] for a in m["test_accuracy_seeds"]]
    differences = np.abs(np.array(swept_accuracies) - np.array(accuracies))
    runs = len(rates) * args.seeds
    print(
        f"{len(rates)} learning rates x {args.seeds} seeds = {runs} runs of {args.config}, "
        f"{args.epochs} epochs, on {result['device_kind']} ({result['backend']}):\n"
        f"  one sweep (one process, one compile):        {swept:7.1f} s\n"
        f"  experiments.compare (a compile per rate):     {compared:7.1f} s  "
        f"({compared / swept:.1f}x the sweep)\n"
        f"  {runs} single runs (a process per run):          {singles:7.1f} s  "
        f"({singles / swept:.1f}x the sweep)\n"
        f"  test accuracy, sweep minus single runs: max |difference| {differences.max():.4f}, "
        f"mean {np.mean(swept_accuracies) - np.mean(accuracies):+.4f} (float rounding of batched "
        "vs unbatched matmuls, grown over the steps)"
    )


if __name__ == "__main__":
    main()
