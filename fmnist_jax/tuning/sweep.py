"""Sweeps: a grid of hyperparameters x seeds trained as one run, then read per member.

A sweep is a run whose config has a `grid`: its run axis holds every member's seeds, so the whole
grid trains in one compiled program (one process, one compile), and it checkpoints, resumes,
stops and early-stops (per run) as any run does. `train(config, workdir)` trains it with
`train_and_evaluate`, then writes what a sweep adds to the workdir:

- sweep.json: per member its values, test and validation loss and accuracy (mean, std and per
  seed, from the weights each seed reports), epochs, divergence and learning curves; `best`, the
  member with the best mean validation accuracy (never chosen on test);
- sweep.md: the members as a Markdown table; sweep.png: accuracy against each swept key and every
  member's validation curve;
- tensorboard/members/<member>/: each member's curves and hparams for TensorBoard.

`inference.load(workdir)` restores the best member's first seed (what export/ holds);
`inference.load(workdir, run=k)` any run (member m's seed s is run m * num_seeds + s).
"""

from __future__ import annotations

import ast
import math
import os
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from fmnist_jax.config import run_axis
from fmnist_jax.errors import UserError
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.records.metrics import EpochRow, Summary, member_name

SWEEP_FILE = "sweep.json"
TABLE_FILE = "sweep.md"
FIGURE_FILE = "sweep.png"
_METRICS = ("val_accuracy", "val_loss", "test_accuracy", "test_loss")
_CURVES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def parse_grid(entries: list[str]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """`["optimizer.learning_rate=3e-4,1e-3", ...]` -> `config.grid`'s ((key, values), ...)."""
    grid = []
    for entry in entries:
        key, sep, text = entry.partition("=")
        try:
            values = tuple(ast.literal_eval(v.strip()) for v in text.split(","))
        except (ValueError, SyntaxError):
            values = None
        if not sep or not values or not all(isinstance(v, (int, float)) for v in values):
            raise UserError(
                f"--grid={entry} is not key=value,value,...: write e.g. "
                "--grid=optimizer.learning_rate=3e-4,1e-3,3e-3 (numbers only, comma-separated)."
            )
        grid.append((key.strip(), values))
    return tuple(grid)


def train(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains the sweep `config` (its `grid` x `num_seeds`) in `workdir` and writes its reports.

    Returns sweep.json's content; raises `UserError` for what the user can fix (a key that cannot
    be swept names `experiments.compare`).
    """
    if not config.grid:
        raise UserError(
            "This sweep has no grid: name at least one key to sweep, e.g. "
            "--grid=optimizer.learning_rate=3e-4,1e-3,3e-3."
        )
    from fmnist_jax.training import (
        train as train_lib,  # after the checks: a refused sweep imports no JAX
    )

    summary = train_lib.train_and_evaluate(config, workdir)
    result = results(config, workdir_lib.read_history(workdir), summary)
    write_reports(workdir, result, config.plots)
    return result


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    if any(v is None or not math.isfinite(v) for v in values):
        return None, None
    return float(np.mean(values)), float(np.std(values))


def _first_nonfinite_epoch(history: list[EpochRow], run: int) -> int | None:
    return next(
        (r["epoch"] for r in history if not math.isfinite(r["train_loss_seeds"][run])), None
    )


def results(config: ConfigDict, history: list[EpochRow], summary: Summary) -> dict[str, Any]:
    """sweep.json's content from a finished sweep's metrics history and summary."""
    axis = run_axis.RunAxis.of(config)
    seeds = list(axis.seeds)
    members = []
    for m, values in enumerate(axis.members):
        runs = list(range(m * config.num_seeds, (m + 1) * config.num_seeds))
        diverged = [
            {"seed": seeds[r], "epoch": e}
            for r in runs
            if (e := _first_nonfinite_epoch(history, r)) is not None
        ]
        member: dict[str, Any] = {
            "name": member_name(values),
            "hparams": values,
            "runs": runs,
            "diverged": diverged,
            "epochs_seeds": [summary["restored_epoch_seeds"][r] for r in runs],
        }
        for metric in _METRICS:
            per_seed = [None if diverged else summary[f"{metric}_seeds"][r] for r in runs]
            member[metric], member[f"{metric}_std"] = _mean_std(per_seed)
            member[f"{metric}_seeds"] = per_seed
        member["curves"] = {
            key: [_mean_std([row[f"{key}_seeds"][r] for r in runs])[0] for row in history]
            for key in _CURVES
        }
        members.append(member)
    return {
        "grid": axis.swept_values(),
        "seeds": seeds[: config.num_seeds],
        "members": members,
        "best": summary["reported_run"] // config.num_seeds,
        "best_run": summary["reported_run"],
        "epochs": [row["epoch"] for row in history],
        "train_seconds": summary["train_seconds"],
        "compile_seconds": summary["compile_seconds"],
        "memory_mib": summary["memory_mib"],
        "memory_mib_per_run": summary["memory_mib_per_run"],
        "backend": summary["backend"],
        "device_kind": summary["device_kind"],
    }


def table(result: dict[str, Any]) -> str:
    """The members as a Markdown table: values, then validation and test metrics (mean +- std
    over the seeds; the value alone for one seed, whose std of 0 would claim a precision)."""
    keys = list(result["grid"])
    spread = len(result["seeds"]) > 1
    header = [k.rpartition(".")[2] for k in keys] + [
        "val accuracy",
        "test accuracy",
        "test loss",
        "epochs",
    ]
    rows = [
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for i, m in enumerate(result["members"]):
        if m["diverged"]:
            first = m["diverged"][0]
            cells = [f"diverged (seed {first['seed']}, epoch {first['epoch']})"] * 3
        else:
            cells = [
                f"{m[metric]:.4f}" + (f" ± {m[metric + '_std']:.4f}" if spread else "")
                for metric in ("val_accuracy", "test_accuracy", "test_loss")
            ]
        best = " (best)" if i == result["best"] else ""
        values = [f"{m['hparams'][k]:g}" for k in keys]
        values[0] += best
        rows.append("| " + " | ".join([*values, *cells, str(max(m["epochs_seeds"]))]) + " |")
    return "\n".join(rows) + "\n"


def write_reports(workdir: str, result: dict[str, Any], figure: bool) -> None:
    """sweep.json, sweep.md, sweep.png (if `figure`) and the members' TensorBoard runs."""
    from fmnist_jax.reports import board, figure_workers

    workdir_lib.write_json(os.path.join(workdir, SWEEP_FILE), result)
    with open(os.path.join(workdir, TABLE_FILE), "w") as f:
        f.write(table(result))
    if figure:
        figure_workers.draw([("sweep", {"result": result}, os.path.join(workdir, FIGURE_FILE))])
    board.write_members(workdir, result)
