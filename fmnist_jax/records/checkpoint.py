"""Orbax checkpoints of a run in `<workdir>/checkpoints/`: resume, keep the best, restore for inference.

Three Orbax managers, one directory each:
- `latest/`: the whole run state (the last `checkpoint.keep` kept; when: `train._due`), enough to
  resume bit-identically: model and optimizer state, early-stopping state and its best
  weights, the metrics history. RNG needs no state: every key derives from (seed, epoch, step).
- `best/`: the weights of the epoch with the best validation accuracy.
- `final/`: the weights the run's summary.json reports (written once, at the end).

Each checkpoint holds the items `model` (params, batch_stats, normalizer: all inference needs),
`meta` (JSON) and, in `latest/` only, `train` (optimizer state and the rest). Orbax writes to a
temporary directory and renames it when complete, so a crash mid-save never leaves a checkpoint
that looks valid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shlex
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from fmnist_jax.errors import UserError
from fmnist_jax.shapes import PyTree

KINDS = ("latest", "best", "final")
# In each checkpoint's directory: the SHA-256 of its items' files, written when it is committed and
# checked before it is restored, so that a changed byte is refused instead of predicting with it.
DIGEST_FILE = "sha256.json"
# Layout of the saved arrays, in each checkpoint's meta: 2 = every array but the normalizer carries
# the leading run axis (one entry per seed); 1 = releases before it, which saved a single run
# (num_seeds 1) without that axis. Restoring converts 1 to 2.
LAYOUT = 2


def directory(workdir: str, kind: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints", kind)


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _without_run_axis(meta: dict[str, Any]) -> bool:
    """Whether a checkpoint was saved by a release that kept a single run's arrays without the run axis."""
    return meta.get("layout", 1) < LAYOUT and meta["config"].get("num_seeds", 1) == 1


def _map_run_arrays(fn: Any, tree: PyTree) -> PyTree:
    """`fn` on every leaf that carries the run axis: all but the model item's normalizer."""
    if isinstance(tree, dict) and "normalizer" in tree:
        return {k: v if k == "normalizer" else jax.tree.map(fn, v) for k, v in tree.items()}
    return jax.tree.map(fn, tree)


def _drop_run_axis(target: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """A single run's array as old releases saved it: replicated over the mesh of `target`."""
    replicated = jax.sharding.NamedSharding(target.sharding.mesh, jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(target.shape[1:], target.dtype, sharding=replicated)


def _add_run_axis(array: jax.Array) -> jax.Array:
    return jnp.expand_dims(array, 0)


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    """Declared up front so that Orbax can read items' metadata and restore any subset of them."""
    return {
        "model": ocp.StandardCheckpointHandler(),
        "train": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


class Damaged(Exception):
    """A checkpoint whose files are not those it was saved with."""


def _step_directory(manager: ocp.CheckpointManager, epoch: int) -> str:
    return os.path.join(str(manager.directory), str(epoch))


def _first_line(error: Exception) -> str:
    """An error's first line: TensorStore's errors go on to print the whole spec of the array."""
    return str(error).split("\n")[0][:400]


def _digest(step: str) -> dict[str, str]:
    """The SHA-256 of every file of the checkpoint's items in `step` (its subdirectories: the
    files beside them are Orbax's own records, which it writes on after committing), by path."""
    digest = {}
    for folder, _, names in os.walk(step):
        for name in names if folder != step else ():
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, step)] = hashlib.file_digest(f, "sha256").hexdigest()
    return dict(sorted(digest.items()))


def _seal(step: str) -> None:
    """Writes the digest of the checkpoint in `step` into it."""
    digest, partial = _digest(step), os.path.join(step, DIGEST_FILE + ".partial")
    with open(partial, "w") as f:
        json.dump(digest, f, indent=1)
    os.replace(partial, os.path.join(step, DIGEST_FILE))


def _check_sealed(step: str) -> None:
    """Raises `Damaged` if a file of the checkpoint in `step` changed since it was sealed. A
    checkpoint of a release before digests has none, and passes."""
    path = os.path.join(step, DIGEST_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        sealed = json.load(f)
    found = _digest(step)
    changed = sorted(
        name for name in sealed.keys() | found.keys() if sealed.get(name) != found.get(name)
    )
    if changed:
        raise Damaged(
            f"{len(changed)} of its files changed since it was saved ({', '.join(changed[:3])})"
        )


def _write_failed(error: Exception) -> UserError:
    return UserError(
        f"Writing a checkpoint failed: {_first_line(error)}. Earlier checkpoints are untouched; free disk space or fix the "
        "workdir's permissions, then run the same command again to resume."
    )


class Checkpoints:
    """The run's checkpoint managers; saves are asynchronous, restores fall back past broken ones."""

    def __init__(self, workdir: str, keep: int, asynchronous: bool = True):
        self.workdir, self.asynchronous = workdir, asynchronous

        def manager(kind: str, max_to_keep: int) -> ocp.CheckpointManager:
            # Sealed in the background once every file is written, before Orbax renames the
            # temporary directory: the checkpoint appears with its digest.
            seal = functools.partial(self._seal_saved, kind)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=asynchronous,
                cleanup_tmp_directories=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=seal)
                if asynchronous
                else None,
            )
            return ocp.CheckpointManager(
                directory(workdir, kind), options=options, item_handlers=_handlers()
            )

        try:
            self._managers = {
                "latest": manager("latest", keep),
                "best": manager("best", 1),
                "final": manager("final", 1),
            }
        except OSError as e:
            raise UserError(
                f"Cannot create checkpoint directories in {workdir}: {e}. Pass a writable --workdir."
            ) from e

    def save(
        self,
        kind: str,
        epoch: int,
        model: PyTree,
        meta: dict[str, Any],
        train: PyTree | None = None,
    ) -> None:
        """Starts saving; the device buffers are copied before this returns, so training may go on."""
        items = {
            "model": ocp.args.StandardSave(model),
            "meta": ocp.args.JsonSave({**meta, "layout": LAYOUT}),
        }
        if train is not None:
            items["train"] = ocp.args.StandardSave(train)
        manager = self._managers[kind]
        try:
            if (
                epoch in manager.all_steps()
            ):  # a resumed run redoing an epoch saved after the resume point
                manager.wait_until_finished()
                manager.delete(epoch)
            manager.save(epoch, args=ocp.args.Composite(**items), force=True)
            if not self.asynchronous and jax.process_index() == 0:
                _seal(_step_directory(manager, epoch))
        except Exception as e:  # noqa: BLE001 - OSError, or TensorStore's ValueError (e.g. RESOURCE_EXHAUSTED: disk full) of this or the previous save
            raise _write_failed(e) from e

    def _seal_saved(self, kind: str) -> None:
        """Seals the one checkpoint of `kind` that Orbax is committing, in its temporary directory
        (`<epoch>.<suffix>`) before it is renamed. One process seals for all."""
        if jax.process_index() != 0:
            return
        (temporary,) = (
            entry.path
            for entry in os.scandir(self.directory(kind))
            if re.fullmatch(r"\d+\..+", entry.name) and entry.is_dir()
        )
        _seal(temporary)

    def wait(self) -> None:
        try:
            for m in self._managers.values():
                m.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - see save
            raise _write_failed(e) from e

    def directory(self, kind: str) -> str:
        return directory(self.workdir, kind)

    def latest_epoch(self) -> int | None:
        """The epoch of the newest complete `latest/` checkpoint (None if there is none)."""
        return self._managers["latest"].latest_step()

    def close(self) -> None:
        for m in self._managers.values():
            m.close()

    def restore_latest(
        self,
        model_like: PyTree,
        train_like: PyTree,
        like: Callable[[dict[str, Any]], tuple[PyTree, PyTree] | None] | None = None,
    ) -> tuple[int, PyTree, PyTree, dict[str, Any]] | None:
        """(epoch, model, train, meta) of the newest readable `latest/` checkpoint, or None if none.

        `like`, if given, gives the templates from the checkpoint's meta instead (a search whose
        trials have programs of their own widths); where it gives None the arrays are not read
        (model and train come back None)."""
        manager = self._managers["latest"]
        for epoch in sorted(manager.all_steps(), reverse=True):
            try:
                _check_sealed(_step_directory(manager, epoch))
                meta = manager.restore(
                    epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                ).meta
            except Exception as e:  # Orbax/TensorStore raise many types for damaged files.
                self._set_aside(manager, epoch, e)
                continue
            if like is not None:
                templates = like(meta)
                if templates is None:
                    return epoch, None, None, meta
                model_like, train_like = templates
            try:
                restored = self._restore_arrays(manager, epoch, meta, model_like, train_like)
            except Exception as e:  # noqa: BLE001 - as above
                self._set_aside(manager, epoch, e)
                continue
            return (epoch, *restored, meta)
        return None

    @staticmethod
    def _restore_arrays(
        manager: ocp.CheckpointManager,
        epoch: int,
        meta: dict[str, Any],
        model_like: PyTree,
        train_like: PyTree,
    ) -> tuple[PyTree, PyTree]:
        convert = _without_run_axis(meta)
        model_target, train_target = (_abstract(t) for t in (model_like, train_like))
        if convert:
            model_target, train_target = (
                _map_run_arrays(_drop_run_axis, t) for t in (model_target, train_target)
            )
        restored = manager.restore(
            epoch,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(model_target),
                train=ocp.args.StandardRestore(train_target),
            ),
        )
        if convert:
            return (
                _map_run_arrays(_add_run_axis, restored.model),
                _map_run_arrays(_add_run_axis, restored.train),
            )
        return restored.model, restored.train

    @staticmethod
    def _set_aside(manager: ocp.CheckpointManager, epoch: int, error: Exception) -> None:
        damaged = os.path.join(
            os.path.dirname(str(manager.directory)), "damaged", f"latest-{epoch}-{int(time.time())}"
        )
        logging.warning(
            "Checkpoint of epoch %d in %s is damaged (%s); moved it to %s and trying the previous one.",
            epoch,
            manager.directory,
            _first_line(error),
            damaged,
        )
        os.makedirs(os.path.dirname(damaged), exist_ok=True)
        os.rename(_step_directory(manager, epoch), damaged)
        manager.reload()


def saved_config(workdir: str) -> dict[str, Any] | None:
    """The config recorded in the newest readable `latest/` checkpoint of `workdir` (None if there is
    none); reads only, so a run can check it before it writes anything."""
    path = directory(workdir, "latest")
    if not os.path.isdir(path):
        return None
    manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(create=False), item_handlers=_handlers()
    )
    try:
        for epoch in sorted(manager.all_steps(), reverse=True):
            try:
                return manager.restore(
                    epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                ).meta["config"]
            except (
                Exception
            ):  # a damaged one: the run's restore_latest moves it aside and reports it
                continue
    finally:
        manager.close()
    return None


def restore_model(workdir: str, kind: str) -> tuple[PyTree, dict[str, Any]]:
    """(model item, meta) of the newest readable checkpoint of `kind`, on the current backend."""
    path = directory(workdir, kind)
    if not os.path.isdir(path):
        raise _missing(workdir, kind)
    manager = ocp.CheckpointManager(
        path, options=ocp.CheckpointManagerOptions(create=False), item_handlers=_handlers()
    )
    steps = sorted(manager.all_steps(), reverse=True)
    # Target: the saved shapes on this process's first device, so a checkpoint written on GPU/TPU
    # restores on CPU (and vice versa).
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    problems = []
    try:
        for epoch in steps:
            try:
                _check_sealed(_step_directory(manager, epoch))
                target = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                    manager.item_metadata(epoch).model,
                )
                restored = manager.restore(
                    epoch,
                    args=ocp.args.Composite(
                        model=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                    ),
                )
            except Exception as e:  # see restore_latest
                problems.append(f"epoch {epoch}: {_first_line(e)}")
                continue
            return (
                _map_run_arrays(_add_run_axis, restored.model)
                if _without_run_axis(restored.meta)
                else restored.model
            ), restored.meta
    finally:
        manager.close()
    if steps:
        others = [k for k in KINDS if k != kind and _holds_a_checkpoint(directory(workdir, k))]
        instead = (
            f"Pick another with {' or '.join(f'--which={k}' for k in others)} (the `which` "
            "argument in Python), or train again"
            if others
            else "Train again"
        )
        raise UserError(
            f"The {kind!r} checkpoint in {path} is damaged ({'; '.join(problems)}): it was changed "
            f"or cut short after it was saved, and is not used. {instead}: its training command "
            "with a new --workdir."
        )
    raise _missing(workdir, kind)


def _missing(workdir: str, kind: str) -> UserError:
    """The error for a checkpoint kind the workdir lacks, naming the kinds it holds."""
    held = [k for k in KINDS if k != kind and _holds_a_checkpoint(directory(workdir, k))]
    others = " or ".join(f"--which={k}" for k in held)
    if kind == "best" and "final" in held:
        return UserError(
            f"The run in {workdir} finished without a 'best' checkpoint: 'best' keeps the epoch of "
            "the best validation accuracy, and this run held out no validation split "
            f"(data.num_validation=0). Pass {others} (the `which` argument in Python)."
        )
    return UserError(
        f"No {kind!r} checkpoint in {directory(workdir, kind)}: the run there has not trained, or has "
        f"not finished. Its command (python -m fmnist_jax.main --config=... --workdir={shlex.quote(workdir)}) "
        "trains it, or resumes and finishes it"
        + (f"; or pass {others} (the `which` argument in Python)." if held else ".")
    )


def _holds_a_checkpoint(path: str) -> bool:
    """Whether `path` holds a finished save: Orbax names those by their epoch, and the saves in
    progress with a temporary suffix."""
    return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))
