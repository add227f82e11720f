"""The optimizers' sweeps side by side: a Markdown table of each at its best learning rate (chosen
on validation) and a figure of validation and test accuracy against the learning rate.

    python experiments/cnn_optimizers_tuned/summarize.py ROOT   (the run.sh ROOT)
"""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NAMES = {
    "sgd_momentum": "SGD momentum 0.9",
    "adam": "Adam",
    "adamw": "AdamW wd 4e-3",
    "adadelta": "Adadelta rho 0.95",
    "rmsprop": "RMSprop",
}


def main(root: str) -> None:
    rows = [
        "| optimizer | learning rates swept (val accuracy) | best | val accuracy | test accuracy | test loss | sweep wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="tight")
    for i, (name, label) in enumerate(NAMES.items()):
        with open(os.path.join(root, name, "sweep.json")) as f:
            result = json.load(f)
        members = result["members"]
        best = members[result["best"]]
        swept = ", ".join(
            f"{m['hparams']['optimizer.learning_rate']:g} ({m['val_accuracy']:.4f})"
            if m["val_accuracy"] is not None
            else f"{m['hparams']['optimizer.learning_rate']:g} (diverged)"
            for m in members
        )
        rows.append(
            f"| {label} | {swept} | {best['hparams']['optimizer.learning_rate']:g} | "
            f"{best['val_accuracy']:.4f} ± {best['val_accuracy_std']:.4f} | "
            f"{best['test_accuracy']:.4f} ± {best['test_accuracy_std']:.4f} | "
            f"{best['test_loss']:.4f} ± {best['test_loss_std']:.4f} | "
            f"{result['train_seconds'] + result['compile_seconds']:.0f} |"
        )
        ok = [m for m in members if m["val_accuracy"] is not None]
        rates = [m["hparams"]["optimizer.learning_rate"] for m in ok]
        ax.plot(rates, [m["val_accuracy"] for m in ok], "o-", color=f"C{i}", label=label)
        ax.plot(rates, [m["test_accuracy"] for m in ok], "x--", color=f"C{i}")
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.grid(alpha=0.3)
    ax.set_ylabel("accuracy (validation solid, test dashed; mean of 2 seeds)")
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(os.path.dirname(__file__), "sweeps.png"), dpi=80)
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1])
