"""The table of experiments/search_cnn: each seed's searched CNN against the recipe's.

python experiments/search_cnn/summarize.py runs/search_cnn
"""

import json
import statistics
import sys
from pathlib import Path


def main(root: Path) -> None:
    rows, gains = [], []
    print(
        "| seed | search's best trial | its best epoch | search test acc | search + best/ training s | recipe test acc | recipe training s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for seed in range(3):
        search = json.loads((root / f"search_{seed}" / "search.json").read_text())
        recipe = json.loads((root / f"recipe_{seed}" / "summary.json").read_text())
        hparams = search["trials"][search["best"]]["hparams"]
        shown = ", ".join(
            f"{k.rpartition('.')[2]} {'x'.join(map(str, v)) if isinstance(v, list) else f'{v:.3g}'}"
            for k, v in hparams.items()
        )
        found, hand = search["final"]["test_accuracy"], recipe["test_accuracy"]
        gains.append(found - hand)
        rows.append((found, hand))
        print(
            f"| {seed} | {shown} | {search['best_epoch']} | {found:.4f} "
            f"| {search['search_seconds']:.0f} + {search['final']['train_seconds']:.0f} "
            f"| {hand:.4f} | {recipe['train_seconds']:.0f} |"
        )
    found, hand = zip(*rows, strict=True)
    print(
        f"\nmean test accuracy: search {statistics.mean(found):.4f} ± {statistics.stdev(found):.4f}, "
        f"recipe {statistics.mean(hand):.4f} ± {statistics.stdev(hand):.4f}; "
        f"gain {statistics.mean(gains):+.4f} (per seed {', '.join(f'{g:+.4f}' for g in gains)})"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/search_cnn"))
