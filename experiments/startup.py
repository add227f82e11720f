"""Where the seconds of one training command go: start-up, compile, epochs, wrap-up, exit.

    python -m experiments.startup [--config=configs/mlp.py] [--epochs=10] [--repeats=3]
    python -m experiments.startup --against=OTHER_CHECKOUT [--repeats=10]

Runs `python -m fmnist_jax.main` in a fresh workdir (data already prepared) `repeats` times with an
empty compilation cache and as often with the cache its previous run filled, and reads each
process's own log timestamps. Prints, per run, the wall time, the training seconds
from summary.json, their difference (the overhead a user waits for besides training) and the gaps
between the log lines: process start to the first line (imports), to the model table (data), to
"compiled" (init and compiles), over the epochs, to the test line (test, export, plots,
checkpoints) and to the exit. Before and after, it times a fixed pure-Python loop: this VM runs
the same work up to 2x slower at some moments than at others, and the loop says which moment it was.

With `--against`, it compares this checkout with another one (the same code but for one change, say)
instead: `repeats` interleaved pairs, each checkout's programs cached by a first run not counted,
the order within a pair alternating (`--empty_cache`: every run compiling), and prints both medians
and the median of the pairs' differences. That is how docs/design.md's start-up decisions were measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

_LOG_LINE = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+) +\d+ (\S+)\] (.*)")


def _seconds_of_day(match: re.Match) -> float:
    return int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])


def run_once(
    config: str, epochs: int, extra: list[str], cache_dir: str, checkout: str = "."
) -> dict[str, float]:
    """Wall time, training seconds and the phase gaps of one command run in `checkout`, in seconds."""
    with tempfile.TemporaryDirectory() as workdir:
        now = datetime.datetime.now()
        start_of_day = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
        start = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "fmnist_jax.main",
            f"--config={config}",
            f"--workdir={workdir}",
            f"--config.num_epochs={epochs}",
            *extra,
        ]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=checkout,
            env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, PYTHONPATH=checkout),
        )
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
    lines = [
        (_seconds_of_day(m) - start_of_day, m[5])
        for m in map(_LOG_LINE.match, result.stderr.splitlines())
        if m
    ]

    def first(pattern: str) -> float:
        return next(t for t, text in lines if re.search(pattern, text))

    marks = {
        "start-up: imports, data, model table": first(
            r"^$"
        ),  # the model table's line starts with a newline
        "init and compile": first(r"compiled in"),
        "epochs": first(rf"epoch +{epochs}/{epochs}"),
        "test, export, plots, checkpoints": first(r"^Test loss"),
        "exit": wall,
    }
    phases, previous = {}, 0.0
    for name, at in marks.items():
        phases[name] = at - previous
        previous = at
    return {
        "wall": wall,
        "train_seconds": summary["train_seconds"],
        "overhead": wall - summary["train_seconds"],
        **phases,
    }


def reference_loop_seconds() -> float:
    """Seconds of 20 million Python additions in a fresh process (2.2 s on the quick Intel Xeon)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "s = 0\nfor i in range(20_000_000): s += i"], check=True)
    return time.perf_counter() - start


def _drop_page_cache() -> None:
    """Empties the kernel's page cache (root, Linux): the next run reads its files from disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def compare(args: argparse.Namespace) -> None:
    """Interleaved pairs of this checkout and `args.against`, each with its programs cached."""
    checkouts = {"this": os.path.abspath("."), "against": os.path.abspath(args.against)}
    walls: dict[str, list[float]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as scratch:
        caches = {name: os.path.join(scratch, name) for name in checkouts}
        for name, checkout in checkouts.items():  # fills each one's compilation cache
            run_once(args.config, args.epochs, args.overrides, caches[name], checkout)
        for i in range(args.repeats):
            order = list(checkouts) if i % 2 == 0 else list(reversed(checkouts))
            for name in order:
                if args.cold:
                    _drop_page_cache()
                cache = os.path.join(scratch, f"{name}-{i}") if args.empty_cache else caches[name]
                run = run_once(args.config, args.epochs, args.overrides, cache, checkouts[name])
                walls[name].append(run["wall"])
    differences = [a - b for a, b in zip(walls["against"], walls["this"], strict=True)]
    print(f"whole command, seconds, {args.repeats} interleaved pairs:")
    for name, values in walls.items():
        print(
            f"  {name} ({checkouts[name]}): median {statistics.median(values):.2f}; "
            + ", ".join(f"{v:.2f}" for v in values)
        )
    print(
        f"  against - this: median {statistics.median(differences):+.2f} s; "
        + ", ".join(f"{d:+.2f}" for d in differences)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/mlp.py")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", help="another checkout to compare with, pair by pair")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="with --against: drop the page cache before each run (root)",
    )
    parser.add_argument(
        "--empty_cache", action="store_true", help="with --against: every run compiles its programs"
    )
    parser.add_argument("overrides", nargs="*", help="extra --config.key=value flags (after --)")
    args = parser.parse_args()
    if args.against:
        compare(args)
        return
    loop_before = reference_loop_seconds()
    with tempfile.TemporaryDirectory() as scratch:
        # Alternating: an empty compilation cache (the first run of a config), then one its
        # previous run filled (every later run).
        runs = {"empty": [], "filled": []}
        for i in range(args.repeats):
            cache = os.path.join(scratch, f"cache-{i}")
            runs["empty"].append(run_once(args.config, args.epochs, args.overrides, cache))
            runs["filled"].append(run_once(args.config, args.epochs, args.overrides, cache))
    loop_after = reference_loop_seconds()
    print(
        f"`python -m fmnist_jax.main --config={args.config} --config.num_epochs={args.epochs}`, seconds, {args.repeats} runs each "
        f"(reference loop {loop_before:.2f} s before, {loop_after:.2f} s after):\n"
    )
    print(
        "| | "
        + " | ".join(f"{cache} cache, median" for cache in runs)
        + " | runs (empty cache) | runs (filled cache) |"
    )
    print("| --- |" + " --- |" * (2 + len(runs)))
    for key in runs["empty"][0]:
        values = {cache: [r[key] for r in rs] for cache, rs in runs.items()}
        medians = " | ".join(f"{statistics.median(v):.2f}" for v in values.values())
        print(
            f"| {key} | {medians} | "
            + " | ".join(", ".join(f"{x:.2f}" for x in v) for v in values.values())
            + " |"
        )


if __name__ == "__main__":
    main()
