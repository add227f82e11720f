"""The data: Fashion-MNIST as host arrays (here), prepared once from tfds, from local upstream
files (`staging`) or from Kaggle's CSV pair (`kaggle`).

Fashion-MNIST as host arrays, read with NumPy alone: no TensorFlow and well under a second.

The dataset is prepared once per data dir by `fmnist_jax.prepare`: the official tfds builder (which
needs TensorFlow) writes its TFRecords, then the splits are read once, in tfds' deterministic
example order, into one array file next to them (`ARRAYS_FILE`). That file records the SHA-256 of
every array and of the tfds `dataset_info.json` it was derived from; each load checks both, so a
damaged or stale file is derived again rather than trusted. When the file is missing, `load` runs
the preparation in a child process, so TensorFlow never shares a process, memory or GPU with JAX.

The splits come back as images uint8 NHWC and labels int32; the training code puts them on the
device once and does all scaling there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
from absl import logging
from ml_collections import ConfigDict

from fmnist_jax import interrupts
from fmnist_jax.errors import UserError
from fmnist_jax.shapes import IMAGE_SHAPE

DATASET, VERSION = "fashion_mnist", "3.0.1"
ARRAYS_FILE = "fmnist_jax_arrays.npz"
DATASET_INFO_FILE = "dataset_info.json"
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train / validation / test arrays on the host. Validation is the start of tfds' train split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def tfds_data_dir(data_config: ConfigDict) -> str:
    """The configured tfds data dir, else tfds' own default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return data_config.tfds_data_dir or os.environ.get(
        "TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    )


def prepared_dir(data_config: ConfigDict) -> str:
    """Where tfds keeps the prepared dataset (its `builder.data_dir`), and the arrays file beside it."""
    return os.path.join(tfds_data_dir(data_config), DATASET, VERSION)


def _sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(
        memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data
    ).hexdigest()


def _dataset_info_digest(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, DATASET_INFO_FILE), "rb") as f:
            return _sha256(f.read())
    except OSError:
        return None


def write_arrays(directory: str, arrays: dict[str, np.ndarray], class_names: list[str]) -> None:
    """Writes `arrays` ({split}_images / {split}_labels) with the digests `read_arrays` checks (atomically)."""
    manifest = {
        "dataset_info_sha256": _dataset_info_digest(directory),
        "arrays_sha256": {name: _sha256(a) for name, a in arrays.items()},
        "class_names": list(class_names),
    }
    path = os.path.join(directory, ARRAYS_FILE)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, manifest=np.array(json.dumps(manifest)), **arrays)
    os.replace(tmp, path)


def read_arrays(directory: str) -> tuple[dict[str, np.ndarray], list[str]] | None:
    """The arrays and class names, or None when the file is missing, damaged or not derived from the
    prepared dataset now in `directory`."""
    try:
        with np.load(os.path.join(directory, ARRAYS_FILE), allow_pickle=False) as stored:
            manifest = json.loads(str(stored["manifest"]))
            arrays = {name: stored[name] for name in manifest["arrays_sha256"]}
    except FileNotFoundError:
        return None
    except Exception as e:  # NumPy and zipfile raise many types for a damaged file.
        logging.warning(
            "%s is unreadable (%s: %s); deriving it again.",
            os.path.join(directory, ARRAYS_FILE),
            type(e).__name__,
            e,
        )
        return None
    if manifest["dataset_info_sha256"] != _dataset_info_digest(directory) or any(
        _sha256(a) != manifest["arrays_sha256"][name] for name, a in arrays.items()
    ):
        logging.warning(
            "%s does not match its checksums or the prepared dataset; deriving it again.",
            os.path.join(directory, ARRAYS_FILE),
        )
        return None
    return arrays, manifest["class_names"]


def prepare(data_config: ConfigDict) -> tuple[dict[str, np.ndarray], list[str]]:
    """The verified arrays, after preparing them in a child process (`fmnist_jax.prepare`) if needed."""
    directory = prepared_dir(data_config)
    loaded = read_arrays(directory)
    if loaded is not None:
        return loaded
    logging.info(
        "Preparing Fashion-MNIST in %s (once per data dir, about 30 s; needs TensorFlow).",
        directory,
    )
    start = time.perf_counter()
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (package_parent, os.environ.get("PYTHONPATH")) if p
        ),
        "CUDA_VISIBLE_DEVICES": "",  # TensorFlow must not touch the accelerator JAX owns
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    command = [
        sys.executable,
        "-m",
        "fmnist_jax.prepare",
        f"--tfds_data_dir={tfds_data_dir(data_config)}",
        f"--source_dir={data_config.source_dir}",
    ]
    child = subprocess.run(command, capture_output=True, text=True, env=env)
    if child.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # Ctrl-C reaches both
        raise interrupts.Stopped(
            child.returncode - 128,
            f"Stopped by {signal.Signals(child.returncode - 128).name} while preparing "
            "Fashion-MNIST, before any training: nothing was lost (tfds keeps nothing half-written).",
        )
    if child.returncode != 0:
        errors = [
            line.removeprefix("error: ")
            for line in child.stderr.splitlines()
            if line.startswith("error: ")
        ]
        if errors:  # the child names its own flags; this run's are the config's
            raise UserError(
                re.sub(r"--(source_dir|tfds_data_dir)=", r"--config.data.\1=", errors[-1])
            )
        tail = " | ".join(child.stderr.strip().splitlines()[-5:])
        raise UserError(
            f"Preparing Fashion-MNIST failed (exit code {child.returncode}): {tail}. Run `{' '.join(command[1:])}` "
            "to see its whole output."
        )
    loaded = read_arrays(directory)
    if loaded is None:
        raise UserError(
            f"Preparing Fashion-MNIST wrote no readable {ARRAYS_FILE} in {directory}. Delete that directory and run again."
        )
    logging.info("Prepared Fashion-MNIST in %.1f s.", time.perf_counter() - start)
    return loaded


def load(data_config: ConfigDict) -> Splits:
    """The train, validation and test splits as uint8 NHWC images and int32 labels, in tfds' order.

    Args:
        data_config: `config.data` (where tfds keeps the data, `num_validation`, `num_train`).

    Returns:
        `Splits`; validation is the first `num_validation` examples of tfds' train split, training
        the next `num_train` (0: all the rest). The verified arrays file is read without
        TensorFlow; it is prepared first (in a child process, with TensorFlow) when missing,
        damaged or stale.
    """
    arrays, class_names = prepare(data_config)
    num_validation = data_config.num_validation
    num_train_total = len(arrays["train_labels"])
    if num_validation >= num_train_total:
        raise UserError(
            f"data.num_validation={num_validation} leaves no training examples (the train split has "
            f"{num_train_total}). Use a value in [0, {num_train_total - 1}]."
        )
    images, labels = arrays["train_images"], arrays["train_labels"]
    end = num_validation + data_config.num_train if data_config.num_train else None
    return Splits(
        train_images=images[num_validation:end],
        train_labels=labels[num_validation:end],
        val_images=images[:num_validation],
        val_labels=labels[:num_validation],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        class_names=tuple(class_names),
    )


def random_splits(num_train: int, num_test: int, seed: int = 0, num_validation: int = 0) -> Splits:
    """Random uint8 images and labels in the dataset's shapes, validation first as `load` splits
    them: to time and compile programs where the data does not matter."""
    rng = np.random.default_rng(seed)
    end = num_validation + num_train
    images = rng.integers(0, 256, (end + num_test, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, 10, end + num_test).astype(np.int32)
    return Splits(
        train_images=images[num_validation:end],
        train_labels=labels[num_validation:end],
        val_images=images[:num_validation],
        val_labels=labels[:num_validation],
        test_images=images[end:],
        test_labels=labels[end:],
        class_names=tuple(f"class {i}" for i in range(10)),
    )
