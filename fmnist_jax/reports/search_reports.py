"""A search's reports: search.json, the table of its best trials, its figure, TensorBoard HParams."""

from __future__ import annotations

import os
from typing import Any

from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports import board, figure_workers, shown

SEARCH_FILE = "search.json"
TABLE_FILE = "search.md"
FIGURE_FILE = "search.png"
_TOP = 10


def write(workdir: str, result: dict[str, Any], figure: bool) -> None:
    """search.json, search.md, search.png (if `figure`) and one HParams entry per trial."""
    workdir_lib.write_json(os.path.join(workdir, SEARCH_FILE), result)
    with open(os.path.join(workdir, TABLE_FILE), "w") as f:
        f.write(table(result))
    if figure:
        figure_workers.draw([("search", {"result": result}, os.path.join(workdir, FIGURE_FILE))])
    board.write_trials(workdir, result)


def _cell(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def table(result: dict[str, Any]) -> str:
    """The best trials (on validation) as a Markdown table, then the best one's test in best/."""
    objective = result["objective"]
    keys = [key for key, _ in result["space"]]
    ranked = sorted(
        (t for t in result["trials"] if t["objective"] is not None),
        key=lambda t: -t["objective"] if objective == "val_accuracy" else t["objective"],
    )
    header = ["trial", *(k.rpartition(".")[2] for k in keys), objective, "epochs", "stopped"]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for t in ranked[:_TOP]:
        values = [_cell(shown(t["hparams"][k])) for k in keys]
        best = " (best)" if t["index"] == result["best"] else ""
        cells = [
            f"{t['index']}{best}",
            *values,
            f"{t['objective']:.4f}",
            str(t["epochs"]),
            t["stopped"] + (" (did not learn)" if t.get("learned") is False else ""),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    diverged = sum(t["objective"] is None for t in result["trials"])
    failed = sum(t.get("learned") is False for t in result["trials"]) - diverged
    return (
        f"{len(result['trials'])} trials ({result['algorithm']}), {diverged} diverged, {failed} "
        f"did not learn; the best "
        f"{min(_TOP, len(ranked))} on {objective}:\n\n"
        + "\n".join(rows)
        + _front(result)
        + f"\n\n{final(result)}\n"
    )


def _front(result: dict[str, Any]) -> str:
    """The Pareto front of a search of two objectives, one trial a line, most accurate first."""
    if "pareto" not in result:
        return ""
    by_index = {t["index"]: t for t in result["trials"]}
    front = sorted((by_index[i] for i in result["pareto"]), key=lambda t: t["params"])
    lines = [
        f"- trial {t['index']}: {result['objective']} {t['objective']:.4f}, {t['params']:,} parameters"
        for t in front
    ]
    return (
        f"\n\nThe Pareto front on ({result['objective']}, parameters), {len(front)} trials; "
        "best/ trains its best on the first:\n\n" + "\n".join(lines)
    )


def final(result: dict[str, Any]) -> str:
    """Where the best trial's run is, and its test, when this worker trained it."""
    if "final" not in result:
        return (
            f"The best trial is trained by the worker that finished the study's last trial, in "
            f"{result['best_run']}."
        )
    f = result["final"]
    return (
        f"The best trial at its best epoch ({result['best_epoch']}) in best/: test accuracy "
        f"{f['test_accuracy']:.4f}, test loss {f['test_loss']:.4f}."
    )
