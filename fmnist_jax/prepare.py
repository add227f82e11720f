"""Prepare Fashion-MNIST once per data dir: the official tfds builder, then the arrays file.

    python -m fmnist_jax.prepare [--tfds_data_dir=DIR] [--source_dir=DIR]

The only code that imports TensorFlow (through tfds' TFRecord reading and writing); install it with
`pip install 'fmnist_jax[prepare]'`. Runs train, evaluate and predict start it by themselves, in a
child process, when a data dir has no arrays file yet (`fmnist_jax.data.prepare`). With a local copy
of the upstream files (the config's or Debian's) tfds prepares offline, checking its registered
checksums; without one, tfds downloads only if its host answers within a few seconds.
"""

from __future__ import annotations

import logging as std_logging
import os
import socket
import threading
import urllib.parse

import numpy as np
from absl import flags, logging
from ml_collections import ConfigDict

from fmnist_jax import cli, data
from fmnist_jax.data import staging
from fmnist_jax.errors import UserError

_NETWORK_PROBE_SECONDS = 5.0
# TensorFlow's CUDA probing is noise here; tfds may import TensorFlow as soon as it is used.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _no_data_message(detail: str) -> str:
    return (
        f"Fashion-MNIST is not available: {detail}. Either install Debian's copy "
        "(`apt-get install dataset-fashion-mnist`, which puts it in "
        f"{staging.DEBIAN_SOURCE_DIR}), or put the four upstream files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) in a directory DIR and pass --config.data.source_dir=DIR."
    )


def _can_reach(url: str, timeout: float = _NETWORK_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` (DNS included)."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    reachable = []

    def probe():
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reachable)


def _tensorflow():
    """TensorFlow, hidden from every GPU (JAX owns it), or a `UserError` saying how to install it."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise UserError(
            f"Preparing Fashion-MNIST (once per data dir) needs TensorFlow, which is not installed here ({e}). "
            "Run `pip install 'fmnist_jax[prepare]'` (or `pip install tensorflow`), or prepare it where TensorFlow "
            "is installed (`python -m fmnist_jax.prepare --tfds_data_dir=DIR`) and copy DIR here: training, "
            "evaluation and prediction need no TensorFlow afterwards."
        ) from e
    tf.config.set_visible_devices([], "GPU")
    return tf


def expected_files(builder) -> list[staging.ExpectedFile]:
    """The upstream files tfds prepares `builder` from, with the sizes and checksums it registered."""
    return [
        staging.ExpectedFile(i.filename, i.size, i.checksum) for i in builder.url_infos.values()
    ]


def prepare_tfds(data_config):
    """The prepared tfds builder, preparing it first if needed (see the module docstring)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(
        f"{data.DATASET}:{data.VERSION}", data_dir=data.tfds_data_dir(data_config)
    )
    if builder.is_prepared():
        return builder
    source_dir = staging.find_source_dir(data_config.source_dir)
    manual_dir = os.path.join(data.tfds_data_dir(data_config), "downloads", "manual")
    expected = expected_files(builder)
    if source_dir is not None:
        if not os.path.isdir(source_dir):
            raise UserError(
                _no_data_message(f"--config.data.source_dir={source_dir} is not a directory")
            )
        staging.stage(source_dir, manual_dir, expected)
    elif not _can_reach(next(iter(builder.url_infos))):
        raise UserError(
            _no_data_message(
                "it is not prepared, there is no local copy, and its download host cannot be reached"
            )
        )
    _tensorflow()
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False
            )
        )
    except PermissionError as e:
        raise UserError(
            f"Cannot write the prepared dataset: {e}. Pass a writable --config.data.tfds_data_dir=DIR."
        ) from e
    return builder


def derive_arrays(builder) -> None:
    """Reads every split once through tf.data, in tfds' deterministic order, into the arrays file."""
    import tensorflow_datasets as tfds

    tf = _tensorflow()
    arrays = {}
    try:
        for split in data.SPLITS:
            batches = list(
                tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).batch(10_000))
            )
            arrays[f"{split}_images"] = np.concatenate([b["image"] for b in batches]).astype(
                np.uint8
            )
            arrays[f"{split}_labels"] = np.concatenate([b["label"] for b in batches]).astype(
                np.int32
            )
    except (tf.errors.OpError, OSError) as e:
        raise UserError(
            f"The prepared Fashion-MNIST in {builder.data_dir} cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Delete that directory and run again: it is prepared anew "
            "from the source files."
        ) from e
    for split in data.SPLITS:
        expected = builder.info.splits[split].num_examples
        if len(arrays[f"{split}_labels"]) != expected:
            raise UserError(
                f"The prepared Fashion-MNIST in {builder.data_dir} holds {len(arrays[f'{split}_labels'])} {split} examples, "
                f"not the {expected} its dataset_info.json lists. Delete that directory and run again."
            )
    try:
        data.write_arrays(builder.data_dir, arrays, builder.info.features["label"].names)
    except OSError as e:
        raise UserError(
            f"Cannot write {data.ARRAYS_FILE} in {builder.data_dir}: {e}. Pass a writable --config.data.tfds_data_dir=DIR."
        ) from e


_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", "", "tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)."
)
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", "", "Directory of the four upstream files (default: Debian's copy)."
)


def _errors_only(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR


def _prepare() -> None:
    data_config = ConfigDict(
        {"tfds_data_dir": _TFDS_DATA_DIR.value, "source_dir": _SOURCE_DIR.value}
    )
    logging.get_absl_logger().addFilter(
        _errors_only
    )  # tfds logs every step, and warns about every dir not prepared yet
    try:
        if data.read_arrays(data.prepared_dir(data_config)) is None:
            derive_arrays(prepare_tfds(data_config))
    except UserError as e:  # its messages name training's flags; this command's lack `config.data.`
        raise UserError(str(e).replace("--config.data.", "--")) from e
    print(f"Prepared {os.path.join(data.prepared_dir(data_config), data.ARRAYS_FILE)}")


if __name__ == "__main__":
    cli.main(_prepare, clean_stops=False)
