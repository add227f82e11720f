"""Fashion-MNIST through tfds: prepare the official builder (offline when possible), load splits.

The splits come back as host NumPy arrays, images uint8 NHWC and labels int32; the training code
puts them on the device once and does all scaling there. TensorFlow is used only inside tfds and is
kept off any GPU, which JAX owns.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import urllib.parse

import numpy as np
from ml_collections import ConfigDict

from fmnist_jax import staging
from fmnist_jax.errors import UserError

DATASET = "fashion_mnist"
_NETWORK_PROBE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train / validation / test arrays on the host. Validation is carved from tfds' train split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def _tfds():
    """Imports tfds with TensorFlow hidden from every GPU, so it never grabs accelerator memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's CUDA probing is noise here
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")
    return tfds


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


def _expected_files(builder) -> list[staging.ExpectedFile]:
    return [staging.ExpectedFile(i.filename, i.size, i.checksum) for i in builder.url_infos.values()]


def prepare(data_config: ConfigDict):
    """Returns the prepared tfds builder, preparing it first if needed.

    With a local copy of the upstream files (config or Debian), tfds prepares from it with its
    checksums checked and no network. Without one, tfds downloads only if its host answers within a
    few seconds; otherwise a clear error names the remedies instead of hanging on a timeout.
    """
    tfds = _tfds()
    data_dir = data_config.tfds_data_dir or None
    builder = tfds.builder(DATASET, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    source_dir = staging.find_source_dir(data_config.source_dir)
    manual_dir = os.path.join(data_dir or tfds.core.constants.DATA_DIR, "downloads", "manual")
    if source_dir is not None:
        if not os.path.isdir(source_dir):
            raise UserError(_no_data_message(f"--config.data.source_dir={source_dir} is not a directory"))
        staging.stage(source_dir, manual_dir, _expected_files(builder))
    elif not _can_reach(next(iter(builder.url_infos))):
        raise UserError(_no_data_message("it is not prepared, there is no local copy, and its download host cannot be reached"))
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=download_config)
    except PermissionError as e:
        raise UserError(f"Cannot write the prepared dataset: {e}. Pass a writable --config.data.tfds_data_dir=DIR.") from e
    return builder


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
    """All examples of `split` as NumPy arrays, in tfds' deterministic order."""
    batches = list(_tfds().as_numpy(builder.as_dataset(split=split, shuffle_files=False).batch(10_000)))
    return {key: np.concatenate([b[key] for b in batches]) for key in ("image", "label")}


def load(data_config: ConfigDict) -> Splits:
    """Loads the three splits; validation is the first `num_validation` training examples."""
    builder = prepare(data_config)
    tfds = _tfds()
    import tensorflow as tf

    try:
        arrays = {split: _read_split(builder, split) for split in ("train", "test")}
    except (tf.errors.OpError, OSError) as e:
        raise UserError(
            f"The prepared Fashion-MNIST in {builder.data_dir} cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Delete that directory and run again: it is prepared anew "
            "from the source files."
        ) from e
    num_validation = data_config.num_validation
    num_train_total = len(arrays["train"]["label"])
    if num_validation >= num_train_total:
        raise UserError(
            f"data.num_validation={num_validation} leaves no training examples (the train split has "
            f"{num_train_total}). Use a value in [0, {num_train_total - 1}]."
        )

    def images(split, sl=slice(None)):
        return np.asarray(arrays[split]["image"][sl], dtype=np.uint8)

    def labels(split, sl=slice(None)):
        return np.asarray(arrays[split]["label"][sl], dtype=np.int32)

    val, train = slice(0, num_validation), slice(num_validation, None)
    return Splits(
        train_images=images("train", train),
        train_labels=labels("train", train),
        val_images=images("train", val),
        val_labels=labels("train", val),
        test_images=images("test"),
        test_labels=labels("test"),
        class_names=tuple(builder.info.features["label"].names),
    )
