"""The table and figure of experiments/search_algorithms: each algorithm's best validation
accuracy so far against the search's seconds, per repeat, and when it found its best trial.

    python experiments/search_algorithms/summarize.py runs/search_algorithms
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ALGORITHMS = {
    "random": "random, every trial to the end",
    "hyperband": "random + Hyperband",
    "tpe": "TPE + Hyperband",
}


def _progress(result: dict) -> tuple[list[float], list[float]]:
    """(seconds, best validation accuracy so far) at each trial's stop."""
    done = sorted(
        (t for t in result["trials"] if t["objective"] is not None), key=lambda t: t["seconds"]
    )
    best, so_far = 0.0, []
    for t in done:
        best = max(best, t["objective"])
        so_far.append(best)
    return [t["seconds"] for t in done], so_far


def main(root: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="tight")
    print(
        "| algorithm | best val accuracy (3 repeats) | mean | seconds to it | search seconds | trial-epochs | test accuracy |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, (name, label) in enumerate(ALGORITHMS.items()):
        bests, found, totals, epochs, tests = [], [], [], [], []
        for seed in range(3):
            result = json.loads((root / f"{name}_{seed}" / "search.json").read_text())
            seconds, so_far = _progress(result)
            ax.step(
                seconds, so_far, where="post", color=f"C{i}", label=label if seed == 0 else None
            )
            bests.append(so_far[-1])
            found.append(seconds[so_far.index(so_far[-1])])
            totals.append(result["search_seconds"])
            epochs.append(sum(t["epochs"] for t in result["trials"]))
            tests.append(result["final"]["test_accuracy"])
        print(
            f"| {label} | {', '.join(f'{b:.4f}' for b in bests)} | {statistics.mean(bests):.4f} "
            f"| {statistics.mean(found):.0f} | {statistics.mean(totals):.0f} "
            f"| {statistics.mean(epochs):.0f} | {statistics.mean(tests):.4f} |"
        )
    ax.set_xlabel("search seconds (training and compiling)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_ylim(0.875, None)
    ax.grid(alpha=0.3), ax.legend()
    fig.savefig(Path(__file__).parent / "progress.png", dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/search_algorithms"))
