"""Kaggle's CSV pair (`fashion-mnist_train.csv`, `fashion-mnist_test.csv`) back into the upstream files.

Kaggle notebooks get Fashion-MNIST as two CSV files (a `label` column, then 784 pixel columns),
possibly in another example order than the upstream release. tfds only prepares from the four
upstream gzip files, checked against its registered checksums, so this module rebuilds exactly those
files: it puts the rows back in upstream order, checks the result against the SHA-256 of the
upstream arrays (`UPSTREAM_CONTENT_SHA256`: an altered, truncated or foreign CSV is refused, never
trusted), writes them in the IDX format and compresses them as the release was (GNU gzip -6, the
upstream gzip header); tfds' checksums then check the compressed bytes too.

The upstream order is `UPSTREAM_ORDER_FILE`: for each split, the upstream index of each example
when the examples are sorted by their bytes (label, then pixels). It was made from the upstream
files with `sorted_order` and is checked against them in `tests/test_data.py`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import warnings

import numpy as np

from fmnist_jax.errors import UserError

# The smaller split first: a wrong file is refused in a second.
CSV_FILES = {"test": "fashion-mnist_test.csv", "train": "fashion-mnist_train.csv"}
UPSTREAM_PREFIX = {"train": "train", "test": "t10k"}
NUM_PIXELS = 28 * 28
UPSTREAM_ORDER_FILE = os.path.join(os.path.dirname(__file__), "upstream_order.npz")
# SHA-256 of each upstream file's decompressed content (the IDX arrays).
UPSTREAM_CONTENT_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def has_csv_pair(directory: str) -> bool:
    return all(os.path.isfile(os.path.join(directory, name)) for name in CSV_FILES.values())


def sorted_order(rows: np.ndarray) -> np.ndarray:
    """Indices that sort [N, 785] uint8 rows (label, pixels) by their bytes; stable for equal rows."""
    return np.argsort(
        np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))).ravel(), kind="stable"
    )


def read_csv(path: str) -> np.ndarray:
    """[N, 785] uint8 rows (label, then 784 pixels) of a Kaggle CSV file, or `UserError`."""
    with open(path, "rb") as f:
        header, _, body = f.read().replace(b"\r", b"").partition(b"\n")
    columns = header.decode("ascii", "replace").split(",")
    if len(columns) != 1 + NUM_PIXELS or columns[0].strip('"') != "label":
        raise UserError(
            f"{path} is not a Fashion-MNIST CSV file: its header should be `label` and 784 pixel "
            f"columns, not {len(columns)} columns starting with {columns[0][:20]!r}."
        )
    damaged = UserError(
        f"{path} is damaged: after its header it should hold only rows of 785 integers in 0-255 "
        "(a label and 784 pixels). Download it again."
    )
    with warnings.catch_warnings():
        # NumPy warns (older) or raises (newer) on text that is not a number: both refuse the file.
        warnings.simplefilter("error", DeprecationWarning)
        try:
            values = np.fromstring(body.replace(b"\n", b",").rstrip(b","), dtype=np.int64, sep=",")
        except (ValueError, DeprecationWarning) as e:
            raise damaged from e
    if values.size % (1 + NUM_PIXELS) or values.min(initial=0) < 0 or values.max(initial=0) > 255:
        raise damaged
    return values.reshape(-1, 1 + NUM_PIXELS).astype(np.uint8)


def _idx(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array (magic 0x08 = unsigned byte, then big-endian dims)."""
    magic = struct.pack(">BBBB", 0, 0, 8, array.ndim)
    return magic + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _gzip(content: bytes) -> bytes:
    """`content` compressed as the release was (GNU gzip -6; `staging` restores the header)."""
    if shutil.which("gzip") is None:
        raise UserError(
            "Rebuilding the upstream Fashion-MNIST files from the Kaggle CSV files needs the `gzip` "
            "program (GNU gzip), which is not on PATH. Install it (apt-get install gzip), or use the "
            "four upstream .gz files instead of the CSV pair."
        )
    return subprocess.run(
        ["gzip", "-6", "-n", "-c"], input=content, capture_output=True, check=True
    ).stdout


def upstream_files(directory: str) -> dict[str, bytes]:
    """The four upstream .gz files (name -> bytes, any gzip header) rebuilt from the CSV pair in
    `directory`.

    Rows in any order are put in upstream order and checked against the upstream arrays' digests;
    `UserError` when they are not exactly the release's pixels and labels.
    """
    with np.load(UPSTREAM_ORDER_FILE) as stored:
        order = {split: stored[split] for split in CSV_FILES}
    files = {}
    for split, name in CSV_FILES.items():
        path = os.path.join(directory, name)
        rows = read_csv(path)
        if len(rows) != len(order[split]):
            raise UserError(
                f"{path} holds {len(rows)} examples; Fashion-MNIST's {split} split has "
                f"{len(order[split])}. The file is truncated or not Fashion-MNIST: download it again."
            )
        upstream = np.empty_like(rows)
        upstream[order[split]] = rows[sorted_order(rows)]
        images = upstream[:, 1:].reshape(-1, 28, 28)
        for kind, array in (("images-idx3", images), ("labels-idx1", upstream[:, 0])):
            filename = f"{UPSTREAM_PREFIX[split]}-{kind}-ubyte.gz"
            content = _idx(array)
            if hashlib.sha256(content).hexdigest() != UPSTREAM_CONTENT_SHA256[filename]:
                raise UserError(
                    f"{path} does not hold exactly the upstream Fashion-MNIST {split} split: its "
                    "pixels or labels differ from the release's (the SHA-256 of the rebuilt "
                    f"{filename.removesuffix('.gz')} does not match). Download the file again, or "
                    "use the four upstream .gz files."
                )
            files[filename] = _gzip(content)
    return files
