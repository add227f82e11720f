"""Runs the same recipes with fmnist_jax and its peers, one subprocess each, and compares them.

    python -m experiments.benchmark [--recipes=mlp,cnn,mlp512,cnn512] [--peers=...] [--cnn_epochs=3]
    python -m experiments.benchmark --recipes= --end_to_end_repeats=3    # the end-to-end rows alone

Prints and saves (experiments/benchmark/results.json, and a Markdown table appended to
WORKSPACE.md) per recipe and peer: median seconds per epoch after the first, first-epoch seconds
(compile included for JIT peers), examples/s, test accuracy, peak RSS, speed ratio to fmnist_jax,
and the fraction of this machine's measured float32 matmul peak the training reaches. Then the
end-to-end rows: the whole reference MLP command against the same notebook job in Keras 3 + TensorFlow,
side by side in this one invocation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

RECIPES = {  # name: (model, batch size)
    "mlp": ("mlp", 32),
    "cnn": ("cnn", 64),
    "mlp512": ("mlp", 512),
    "cnn512": ("cnn", 512),
}
PEERS = ("fmnist_jax", "keras_tf", "keras_jax", "torch", "flax_nnx_loop")
KERAS_BACKEND = {"keras_tf": "tensorflow", "keras_jax": "jax"}
NUM_TRAIN = 55_000
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def matmul_peak_gflops(n: int = 2048, repeats: int = 20) -> float:
    """float32 matmul GFLOP/s of this machine through XLA, best of a few timed runs."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def train_flops_per_example(model_name: str) -> float:
    """Forward FLOPs from XLA's cost analysis, times 3 for forward + backward."""
    import jax
    import jax.numpy as jnp

    from configs import cnn, mlp
    from fmnist_jax import models

    model = models.create((mlp if model_name == "mlp" else cnn).get_config().model)
    x = jnp.zeros((1, 28, 28, 1))
    variables = model.init(jax.random.key(0))
    cost = jax.jit(lambda v, x: model.apply(v, x)[0]).lower(variables, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return 3 * float(cost["flops"])


BASELINE = "fmnist_jax_baseline"  # fmnist_jax of another checkout (--baseline), side by side


def run_peer(
    peer: str, model_name: str, epochs: int, batch_size: int, tfds_data_dir: str, root: str = ROOT
) -> dict:
    """One peer's run of a recipe, in a subprocess whose code comes from the checkout at `root`."""
    env = dict(
        os.environ,
        KERAS_BACKEND=KERAS_BACKEND.get(peer, "jax"),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=root,
    )
    command = [
        sys.executable,
        "-m",
        "experiments.benchmark.peers",
        f"--peer={peer}",
        f"--recipe={model_name}",
        f"--epochs={epochs}",
        f"--batch_size={batch_size}",
        f"--tfds_data_dir={tfds_data_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("BENCHMARK ")]
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr or result.stdout)[-600:]}
    out = json.loads(lines[-1][len("BENCHMARK ") :])
    seconds = out["epoch_seconds"]
    out["first_epoch_seconds"] = seconds[0]
    out["seconds_per_epoch"] = statistics.median(seconds[1:] or seconds)
    out["examples_per_second"] = (NUM_TRAIN // batch_size) * batch_size / out["seconds_per_epoch"]
    return out


def median_run(runs: list[dict]) -> dict:
    """Of a peer's repeated runs (alternated with the other peers' runs), the one with the median
    seconds per epoch, with every run's figure kept under `seconds_per_epoch_runs`."""
    ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds_per_epoch"])
    if not ok:
        return runs[0]
    return {
        **ok[(len(ok) - 1) // 2],
        "seconds_per_epoch_runs": [r["seconds_per_epoch"] for r in runs if "error" not in r],
    }


# Issue 4's CPU targets: (recipe, peer, minimum speedup of fmnist_jax over that peer).
SPEEDUP_TARGETS = [("mlp", "keras_tf", 12.0), ("mlp", "keras_jax", 3.0), ("mlp", "torch", 3.0)] + [
    ("cnn", peer, 1.0) for peer in PEERS[1:]
]
PEAK_TARGETS = {"cnn": 0.40, "mlp512": 0.50}  # minimum fraction of the matmul peak
MEMORY_SLACK_MB = 200  # on the mlp recipe, fmnist_jax's peak RSS <= the lightest peer's + this


def target_lines(results: dict) -> list[str]:
    """One line per target that this run measured: met or missed, and by how much."""

    def verdict(ok: bool, measured: str, target: str) -> str:
        return f"{'met' if ok else 'MISSED'}: {measured} (target {target})"

    ok_rows = {
        recipe: {p: r for p, r in rows.items() if "error" not in r}
        for recipe, rows in results.items()
    }
    lines = []
    for recipe, peer, minimum in SPEEDUP_TARGETS:
        rows = ok_rows.get(recipe, {})
        if "fmnist_jax" in rows and peer in rows:
            ratio = rows[peer]["seconds_per_epoch"] / rows["fmnist_jax"]["seconds_per_epoch"]
            accuracy_gap = 100 * (rows[peer]["test_accuracy"] - rows["fmnist_jax"]["test_accuracy"])
            target = f">= {minimum:g}x" if minimum > 1 else "faster"
            lines.append(
                f"- {recipe} vs {peer}: "
                + verdict(ratio >= minimum and ratio > 1, f"{ratio:.2f}x", target)
                + f"; test accuracy {accuracy_gap:+.2f} points for the peer"
            )
    for recipe, minimum in PEAK_TARGETS.items():
        ours = ok_rows.get(recipe, {}).get("fmnist_jax")
        if ours:
            lines.append(
                f"- {recipe} % of matmul peak: "
                + verdict(
                    ours["fraction_of_peak"] >= minimum,
                    f"{100 * ours['fraction_of_peak']:.1f}%",
                    f">= {100 * minimum:.0f}%",
                )
            )
    rows = ok_rows.get("mlp", {})
    if "fmnist_jax" in rows and len(rows) > 1:
        lightest = min(r["peak_rss_mb"] for p, r in rows.items() if p != "fmnist_jax")
        ours = rows["fmnist_jax"]["peak_rss_mb"]
        lines.append(
            "- mlp peak RSS: "
            + verdict(
                ours <= lightest + MEMORY_SLACK_MB,
                f"{ours:.0f} MB",
                f"<= lightest peer {lightest:.0f} + {MEMORY_SLACK_MB} MB",
            )
        )
    return lines


def end_to_end(tfds_data_dir: str, repeats: int) -> dict[str, list[float]]:
    """Whole-process wall seconds of the reference MLP command (with an empty and with a filled compilation
    cache) and of the same notebook job in Keras 3 + TensorFlow (`experiments.benchmark.notebook`)."""
    data = [f"--config.data.tfds_data_dir={tfds_data_dir}"] if tfds_data_dir else []
    notebook_data = [f"--tfds_data_dir={tfds_data_dir}"] if tfds_data_dir else []
    with tempfile.TemporaryDirectory() as scratch:
        jobs = {
            "fmnist_jax, empty compilation cache": (
                "fmnist_jax.main",
                ["--config=configs/mlp.py", *data],
                True,
            ),
            "fmnist_jax, compilation cache filled by an earlier run": (
                "fmnist_jax.main",
                ["--config=configs/mlp.py", *data],
                False,
            ),
            "keras_tf notebook job": ("experiments.benchmark.notebook", notebook_data, False),
        }
        # Interleaved, one run of each job per round: the VM's speed moves within minutes, and
        # each round meets the same moment. The empty-cache run of round 0 fills cache-0.
        seconds = {label: [] for label in jobs}
        for i in range(repeats):
            for label, (module, args, fresh_cache) in jobs.items():
                workdir = os.path.join(scratch, f"{module}-{i}-{len(seconds[label])}-{fresh_cache}")
                cache = os.path.join(scratch, f"cache-{i}" if fresh_cache else "cache-0")
                env = dict(
                    os.environ,
                    KERAS_BACKEND="tensorflow",
                    TF_CPP_MIN_LOG_LEVEL="3",
                    JAX_COMPILATION_CACHE_DIR=cache,
                    PYTHONPATH=ROOT,
                )
                start = time.perf_counter()
                result = subprocess.run(
                    [sys.executable, "-m", module, f"--workdir={workdir}", *args],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    env=env,
                )
                if result.returncode != 0:
                    raise SystemExit(f"error: {module} failed:\n{result.stderr[-2000:]}")
                seconds[label].append(time.perf_counter() - start)
        for label, values in seconds.items():
            print(label, [round(v, 2) for v in values])
    return seconds


def end_to_end_markdown(seconds: dict[str, list[float]]) -> str:
    keras = statistics.median(seconds["keras_tf notebook job"])
    lines = [
        "\nEnd to end, whole process (import, load the prepared data, fit 10 epochs with 5,000 validation images, "
        "evaluate on the test set, save; fmnist_jax also writes its checkpoints, plots, TensorBoard events and export, "
        "Keras predicts one image), reference MLP, median wall seconds:\n",
        "| job | runs (s) | median s | Keras + TF / this |",
        "| --- | --- | --- | --- |",
    ]
    for label, values in seconds.items():
        median = statistics.median(values)
        lines.append(
            f"| {label} | {', '.join(f'{v:.1f}' for v in values)} | {median:.1f} | {keras / median:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def markdown(results: dict, peak: float, args) -> str:
    lines = [
        f"\n## {datetime.date.today()}: benchmark, fmnist_jax vs peers\n",
        f"`python -m experiments.benchmark --recipes={args.recipes} --peers={args.peers} --mlp_epochs={args.mlp_epochs} "
        f"--cnn_epochs={args.cnn_epochs}"
        + (f" --baseline={args.baseline} --repeats={args.repeats}" if args.baseline else "")
        + f"` on {platform.node() or 'this machine'} ({os.cpu_count()} cores, "
        f"{platform.machine()}); measured float32 matmul peak {peak:.0f} GFLOP/s.\n",
        "| recipe | peer | s/epoch (median after 1st) | 1st epoch s | examples/s | test acc | peak RSS MB | fmnist_jax speedup | % of matmul peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if not results:
        lines = lines[:2]  # only the end-to-end rows were asked for
    for recipe, rows in results.items():
        ours = rows.get("fmnist_jax", {}).get("seconds_per_epoch")
        for peer, r in rows.items():
            if "error" in r:
                lines.append(
                    f"| {recipe} | {peer} | failed: {r['error'].splitlines()[-1][:80] if r['error'] else ''} | | | | | | |"
                )
                continue
            ratio = f"{r['seconds_per_epoch'] / ours:.2f}x" if ours else ""
            lines.append(
                f"| {recipe} | {peer} | {r['seconds_per_epoch']:.3f} | {r['first_epoch_seconds']:.2f} | {r['examples_per_second']:,.0f} | "
                f"{r['test_accuracy']:.4f} | {r['peak_rss_mb']:.0f} | {ratio} | {100 * r['fraction_of_peak']:.1f}% |"
            )
    checks = target_lines(results)
    if checks:
        lines += ["", "Targets (issue 4, CPU):", *checks]
    return "\n".join(lines) + "\n"


def save_results(peak: float, results: dict, end_to_end_seconds: dict[str, list[float]]) -> None:
    """Updates results.json with what this invocation measured, keeping the rest of earlier ones."""
    path = os.path.join(HERE, "results.json")
    saved = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
    if results:
        saved.update(matmul_peak_gflops=peak, results=results)
    if end_to_end_seconds:
        saved["end_to_end_seconds"] = end_to_end_seconds
    with open(path, "w") as f:
        json.dump(saved, f, indent=2)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipes", default="mlp,cnn,mlp512,cnn512")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--mlp_epochs", type=int, default=10)
    parser.add_argument(
        "--cnn_epochs",
        type=int,
        default=3,
        help="CNN epochs per peer (slow peers take minutes each)",
    )
    parser.add_argument("--tfds_data_dir", default="")
    parser.add_argument(
        "--baseline",
        default="",
        help=f"a checkout of another commit: adds the peer {BASELINE}, its fmnist_jax",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each peer, alternated; the median counts"
    )
    parser.add_argument(
        "--no_workspace", action="store_true", help="do not append the table to WORKSPACE.md"
    )
    parser.add_argument(
        "--end_to_end_repeats",
        type=int,
        default=3,
        help="runs of each whole command (0 = skip the end-to-end rows)",
    )
    args = parser.parse_args()

    peak = matmul_peak_gflops()
    print(f"matmul peak {peak:.0f} GFLOP/s")
    results = {}
    for recipe in filter(None, args.recipes.split(",")):
        model_name, batch_size = RECIPES[recipe]
        epochs = args.mlp_epochs if model_name == "mlp" else args.cnn_epochs
        flops = train_flops_per_example(model_name)
        results[recipe] = {}
        peers = {p: ROOT for p in args.peers.split(",")}
        if args.baseline:
            peers[BASELINE] = os.path.abspath(args.baseline)
        runs = {peer: [] for peer in peers}
        for _ in range(args.repeats):
            for peer, root in peers.items():
                name = "fmnist_jax" if peer == BASELINE else peer
                runs[peer].append(
                    run_peer(name, model_name, epochs, batch_size, args.tfds_data_dir, root)
                )
        for peer in peers:
            r = median_run(runs[peer])
            if "error" not in r:
                r["fraction_of_peak"] = flops * r["examples_per_second"] / (peak * 1e9)
            results[recipe][peer] = r
            print(recipe, peer, json.dumps({k: v for k, v in r.items() if k != "epoch_seconds"}))
    seconds = (
        end_to_end(args.tfds_data_dir, args.end_to_end_repeats) if args.end_to_end_repeats else {}
    )
    save_results(peak, results, seconds)
    table = markdown(results, peak, args) + (end_to_end_markdown(seconds) if seconds else "")
    print(table)
    if not args.no_workspace:
        with open(os.path.join(ROOT, "WORKSPACE.md"), "a") as f:
            f.write(table)


if __name__ == "__main__":
    main()
