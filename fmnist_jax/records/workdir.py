"""The run's directory: its resolved config, per-epoch metrics and final summary, written safely.

A workdir belongs to one run at a time and to one config. A run holds an exclusive lock on
`<workdir>/.lock` while it trains, so a second run on the same workdir is refused at once, naming
the holder. Every check that can refuse a run happens before anything in the workdir changes: a
run with a different config (from config.json or the newest checkpoint) is refused naming the
keys that differ; a finished run is reported, not retrained, or trained on when only its
`num_epochs` grew (`trains_on`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging
from ml_collections import ConfigDict

from fmnist_jax import config as config_lib
from fmnist_jax.errors import UserError, writing

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
BOARD_DIR = "tensorboard"  # `reports.board`'s event files,
HPARAMS_RUN = "hparams"  # and in it the run holding the config and test metrics as hparams


def config_as_json(config: ConfigDict) -> dict[str, Any]:
    """The config as plain JSON values (tuples become lists), as it is written to config.json."""
    return json.loads(json.dumps(config.to_dict()))


# Keys that change what a run writes besides its results, so a run may resume with another value.
# The distributed keys too: they differ between the processes of one run, and the results do not
# depend on the device count.
RESUMABLE_KEYS = frozenset(
    {
        "profile",
        "plots",
        "search.heartbeat_seconds",
        *(
            f"checkpoint.{k}"
            for k in ("every_epochs", "min_interval_seconds", "keep", "asynchronous")
        ),
        *(
            f"distributed.{k}"
            for k in ("coordinator_address", "num_processes", "process_id", "timeout_seconds")
        ),
    }
)


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old there, new now' for every dotted key whose JSON value differs (except RESUMABLE_KEYS
    and a `num_epochs` that only grows, see `trains_on`).

    A key that `previous` lacks (a run from before the key existed) counts as its default value.
    """
    given = config_lib.flatten(previous)
    old = {**config_lib.flatten(config_as_json(config_lib.default())), **given}
    new = config_lib.flatten(current)
    keys = sorted((given.keys() | new.keys()) - RESUMABLE_KEYS)
    if trains_on(previous, current):
        keys.remove("num_epochs")
    return [
        f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    ]


def trains_on(previous: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether `current` asks a run of config `previous` only for more epochs, which it then trains
    on to from where it is, as Keras' second `fit` would. The result equals a run asked for that
    many epochs from the start: the data order and every key derive from the seed and the epoch,
    and every schedule but cosine from the epoch alone."""
    return (
        previous["num_epochs"] < current["num_epochs"] and current["schedule"]["name"] != "cosine"
    )


def refuse_other_config(where: str, differences: list[str]) -> None:
    """Raises the one error for a workdir or checkpoint that belongs to another config."""
    if differences:
        epochs = any(d.startswith("num_epochs:") for d in differences)
        raise UserError(
            f"{where} holds a run with a different config ({'; '.join(differences[:8])}). "
            + (
                "num_epochs may grow, to train a run on, but not shrink, nor grow under a cosine "
                "schedule, which is spread over num_epochs from the first epoch. "
                if epochs
                else ""
            )
            + "Use a new --workdir for this config, or delete that directory to discard the old run."
        )


def _replace(path: str, text: str) -> None:
    """Writes atomically: readers see the old file or the new one, never half of one."""
    with writing(path):
        with open(f"{path}.tmp", "w") as f:
            f.write(text)
        os.replace(f"{path}.tmp", path)


def write_json(path: str, value: Any) -> None:
    _replace(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is damaged: it is not valid JSON ({e}). It records the run in this workdir; restore it, "
            "or delete it (the checkpoints' own config is still checked against yours), or pass another --workdir."
        ) from e


# The open descriptors of the locks this process holds: the kernel releases a `flock` when its
# descriptor closes, at `unlock` or when the process ends, however it ends (no stale locks).
_held_locks: dict[str, int] = {}


def holds_search(workdir: str) -> bool:
    """Whether `workdir` holds a hyperparameter search, whose best trial is the run in
    `workdir/best`."""
    path = os.path.join(workdir, CONFIG_FILE)
    return os.path.isfile(path) and describes_search(read_json(path))


def describes_search(config_json: dict[str, Any]) -> bool:
    """Whether a config.json is a search's: it has a `search.space`."""
    return bool(config_json.get("search", {}).get("space"))


def search_best(workdir: str) -> str:
    """The one sentence that sends a user from a search's workdir to its best trial's run."""
    best = os.path.join(workdir, "best")
    return (
        f"{workdir} holds a hyperparameter search, not a trained run: its best trial is the run in "
        f"{best}. Pass --workdir={shlex.quote(best)} (in Python, the path {best!r})."
    )


@contextlib.contextmanager
def locked(workdir: str, named: bool = False) -> Iterator[None]:
    """Holds `workdir`'s lock (see `lock`) while the block runs; `named`: recorded at once (else
    the block calls `name_holder` once its checks pass)."""
    lock(workdir)
    try:
        if named:
            name_holder(workdir)
        yield
    finally:
        unlock(workdir)


def locked_if_inside(workdir: str, paths: list[str]) -> contextlib.AbstractContextManager:
    """`locked(workdir)`, naming this process, when one of `paths` lies inside `workdir` (a
    command about to write its files there), else nothing: a figure written elsewhere may be drawn
    while the run trains."""
    root = os.path.abspath(workdir)
    inside = any(os.path.commonpath([os.path.abspath(p), root]) == root for p in paths)
    return locked(workdir, named=True) if inside else contextlib.nullcontext()


def lock(workdir: str) -> int | None:
    """Takes the exclusive lock of `workdir` (created if missing), or raises naming its holder
    (`name_holder`).

    `flock` is local to a machine on most file systems; on NFS, Linux maps it to NFS byte-range locks,
    which hold across clients. Where a file system has no locks at all (some FUSE mounts, e.g. cloud
    buckets), the run warns and goes on unlocked.
    """
    path = os.path.join(workdir, LOCK_FILE)
    try:
        os.makedirs(workdir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(
            f"Cannot write to workdir {workdir}: {e.strerror or e}. Pass a writable --workdir=DIR."
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            logging.warning(
                "Cannot lock workdir %s (%s): this file system has no locks, so nothing stops a second run there.",
                workdir,
                e.strerror,
            )
            return None
        holder = (
            os.pread(fd, 1000, 0).decode(errors="replace").strip()
            or "a run that has not recorded itself yet"
        )
        os.close(fd)
        raise UserError(
            f"Workdir {workdir} is in use by another run: {holder}. Two runs in one workdir would overwrite each "
            "other's checkpoints and metrics. Wait for that run to finish (or stop it: re-running its command "
            "later resumes it), or pass another --workdir."
        ) from e
    _held_locks[os.path.abspath(workdir)] = fd
    return fd


def name_holder(workdir: str) -> None:
    """Records this process (command line, host, PID, start) in the lock it holds on `workdir`,
    for the next one refused; done once its checks passed, so a refused command changes nothing."""
    fd = _held_locks.get(os.path.abspath(workdir))
    if fd is None:  # not the primary process, or a file system without locks
        return
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = shlex.join([os.path.basename(sys.executable), *sys.argv])[:300]
    os.ftruncate(fd, 0)
    os.pwrite(
        fd,
        f"{command} (host {socket.gethostname()}, PID {os.getpid()}, started {started})\n".encode(),
        0,
    )


def unlock(workdir: str) -> None:
    """Releases the lock this process took on `workdir`, if it holds one."""
    fd = _held_locks.pop(os.path.abspath(workdir), None)
    if fd is not None:
        os.close(fd)


def open_workdir(
    workdir: str,
    config: ConfigDict,
    checkpoint_config: Callable[[], dict[str, Any] | None],
    primary: bool = True,
) -> dict[str, Any] | None:
    """Claims `workdir` for `config`; returns the summary if this exact run already finished there.

    The primary process, which holds the workdir's lock (`locked`), checks config.json and
    `checkpoint_config()` (the config of the newest checkpoint), and only then writes: a refused
    run changes nothing. The other processes of a multi-host run only check.
    """
    config_path, summary_path = (
        os.path.join(workdir, CONFIG_FILE),
        os.path.join(workdir, SUMMARY_FILE),
    )
    wanted = config_as_json(config)
    finished = None
    if holds_search(workdir):
        raise UserError(
            f"{search_best(workdir)} Training a run into the search's workdir would mix the two: "
            "pass a new --workdir to train a run."
        )
    if os.path.exists(config_path):
        previous = read_json(config_path)
        refuse_other_config(f"Workdir {workdir}", config_differences(previous, wanted))
        if os.path.exists(summary_path):
            finished = read_json(summary_path)
            if not trains_on(previous, wanted):
                return finished
            _refuse_a_stopped_run(workdir, finished, previous)
    saved = checkpoint_config()
    if saved is not None:
        refuse_other_config(
            f"The newest checkpoint in {os.path.join(workdir, 'checkpoints')}",
            config_differences(saved, wanted),
        )
    if primary:
        if finished is not None:
            kept = _keep_finished_records(workdir, previous["num_epochs"])
            logging.info(
                "Training the finished run in %s on to %d epochs; the summary of its first %d is "
                "now %s.",
                workdir,
                config.num_epochs,
                previous["num_epochs"],
                kept,
            )
        name_holder(workdir)
        write_json(config_path, wanted)
    return None


# What a finished run writes about its end, which a run trained on writes anew: its summary (which
# would say the longer run finished) and TensorBoard's hparams run, whose HParams tab would
# otherwise find two sessions in one run.
_FINISHED_RECORDS = (SUMMARY_FILE, os.path.join(BOARD_DIR, HPARAMS_RUN))


def _keep_finished_records(workdir: str, epochs: int) -> str:
    """Renames the finished run's records to `<name>_<epochs>_epochs[.json]`; returns the summary's
    new path. Done before config.json changes, so an interrupted run never looks finished."""
    kept = []
    for record in _FINISHED_RECORDS:
        stem, extension = os.path.splitext(os.path.join(workdir, record))
        kept.append(f"{stem}_{epochs}_epochs{extension}")
        if os.path.exists(stem + extension):
            with writing(kept[-1]):
                os.replace(stem + extension, kept[-1])
    return kept[0]


def _refuse_a_stopped_run(workdir: str, summary: dict[str, Any], previous: dict[str, Any]) -> None:
    """A run that early stopping ended would stop again at once: more epochs would train nothing."""
    if summary["epochs_run"] < previous["num_epochs"]:
        raise UserError(
            f"The run in {workdir} was ended by early stopping after epoch {summary['epochs_run']} "
            f"of {previous['num_epochs']}, so more epochs would train nothing: it would stop again "
            "at once. To train longer, pass a new --workdir with a larger early_stopping.patience, "
            "or without early stopping."
        )


class MetricsLog:
    """`metrics.jsonl`: one JSON object per epoch, flushed as soon as the epoch ends.

    Starts from `history` (the rows a resumed checkpoint had), so rows of epochs trained after the
    last checkpoint and lost with it are not kept twice.
    """

    def __init__(self, workdir: str, history: list[dict[str, Any]], primary: bool = True):
        self._path = os.path.join(workdir, METRICS_FILE) if primary else None
        if self._path:
            _replace(self._path, "".join(map(_line, history)))

    def write(self, row: dict[str, Any]) -> None:
        if self._path:  # a whole line per append
            with writing(self._path), open(self._path, "a") as f:
                f.write(_line(row))


def read_history(workdir: str) -> list[dict[str, Any]]:
    """A run's `metrics.jsonl` rows (`metrics.EpochRow`), oldest epoch first: its learning curves."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f]


def _line(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True) + "\n"


def write_summary(workdir: str, summary: dict[str, Any]) -> None:
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)
