"""The run's directory: its resolved config, per-epoch metrics and final summary, written safely.

A workdir belongs to one config. A second run with a different config is refused (naming the keys
that differ) rather than mixing two runs' files; a finished run is reported, not retrained.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ml_collections import ConfigDict

from fmnist_jax import config as config_lib
from fmnist_jax.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b": value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_as_json(config: ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values (tuples become lists), as it is written to config.json."""
    return json.loads(json.dumps(config.to_dict()))


# Keys that change what a run writes besides its results, so a run may resume with another value.
# The distributed keys too: they differ between the processes of one run, and the results do not
# depend on the device count.
RESUMABLE_KEYS = frozenset({"profile", *(f"distributed.{k}" for k in ("coordinator_address", "num_processes", "process_id", "timeout_seconds"))})


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old there, new now' for every dotted key whose JSON value differs (except RESUMABLE_KEYS).

    A key that `previous` lacks (a run from before the key existed) counts as its default value.
    """
    old = {**flatten(config_as_json(config_lib.default())), **flatten(previous)}
    new = flatten(current)
    keys = sorted((flatten(previous).keys() | new.keys()) - RESUMABLE_KEYS)
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]


def refuse_other_config(where: str, differences: list[str]) -> None:
    """Raises the one error for a workdir or checkpoint that belongs to another config."""
    if differences:
        raise UserError(
            f"{where} holds a run with a different config ({'; '.join(differences[:8])}). Use a new "
            "--workdir for this config, or delete that directory to discard the old run."
        )


def write_json(path: str, value: Any) -> None:
    """Writes atomically: readers see the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def open_workdir(workdir: str, config: ConfigDict, primary: bool = True) -> dict[str, Any] | None:
    """Claims `workdir` for `config`; returns the summary if this exact run already finished there.

    Only the `primary` process of a multi-host run writes; the others only check.
    """
    config_path, summary_path = os.path.join(workdir, CONFIG_FILE), os.path.join(workdir, SUMMARY_FILE)
    if not primary:
        return read_json(summary_path) if os.path.exists(summary_path) else None
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"Cannot write to workdir {workdir}: {e.strerror or e}. Pass a writable --workdir=DIR.") from e
    wanted = config_as_json(config)
    if os.path.exists(config_path):
        refuse_other_config(f"Workdir {workdir}", config_differences(read_json(config_path), wanted))
        if os.path.exists(summary_path):
            return read_json(summary_path)
    write_json(config_path, wanted)
    return None


class MetricsLog:
    """`metrics.jsonl`: one JSON object per epoch, flushed as soon as the epoch ends.

    Starts from `history` (the rows a resumed checkpoint had), so rows of epochs trained after the
    last checkpoint and lost with it are not kept twice.
    """

    def __init__(self, workdir: str, history: list[dict[str, Any]], primary: bool = True):
        self._path = os.path.join(workdir, METRICS_FILE) if primary else None
        if self._path:
            with open(self._path, "w") as f:
                f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in history)

    def write(self, row: dict[str, Any]) -> None:
        if self._path:
            with open(self._path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)
