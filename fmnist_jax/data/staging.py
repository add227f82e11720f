"""Stages a local copy of the four upstream Fashion-MNIST files into tfds' manual dir.

tfds verifies every file against the sha256 it registered for the upstream download. Debian's
`dataset-fashion-mnist` ships the same compressed bytes, but rewrote the gzip header (dropped the
FNAME field, changed MTIME). The header is not part of the data, so we restore the upstream header
and let tfds check the result: a file that still does not match is rejected, never trusted.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Iterable

from fmnist_jax.data import kaggle
from fmnist_jax.errors import UserError

DEBIAN_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"

# Upstream gzip MTIME per file prefix (the files were compressed at two moments in 2017).
_UPSTREAM_MTIME = {"train-": 1504176606, "t10k-": 1504176627}
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16


@dataclasses.dataclass(frozen=True)
class ExpectedFile:
    """What tfds registered for one upstream file."""

    filename: str
    size: int
    sha256: str


def gzip_payload(data: bytes) -> bytes:
    """Returns the deflate stream and trailer of a gzip file, i.e. everything after the header."""
    if len(data) < 18 or data[:3] != b"\x1f\x8b\x08":
        raise ValueError("not a gzip file")
    flags = data[3]
    pos = 10
    if flags & _FEXTRA:
        (extra_len,) = struct.unpack("<H", data[pos : pos + 2])
        pos += 2 + extra_len
    for field in (_FNAME, _FCOMMENT):
        if flags & field:
            pos = data.index(b"\x00", pos) + 1
    if flags & _FHCRC:
        pos += 2
    return data[pos:]


def upstream_header(filename: str) -> bytes:
    """The gzip header the upstream release used for `filename` (e.g. 'train-images-idx3-ubyte.gz')."""
    mtime = next(t for prefix, t in _UPSTREAM_MTIME.items() if filename.startswith(prefix))
    original_name = filename.removesuffix(".gz").encode()
    return (
        b"\x1f\x8b\x08"
        + bytes([_FNAME])
        + struct.pack("<I", mtime)
        + b"\x00\x03"
        + original_name
        + b"\x00"
    )


def restore_upstream(filename: str, data: bytes) -> bytes:
    """Returns `data` with the upstream gzip header in place of whatever header it has."""
    return upstream_header(filename) + gzip_payload(data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _explain_mismatch(path: str, data: bytes, expected: ExpectedFile) -> str:
    """Says why a file is not the upstream one, as precisely as its bytes allow."""
    try:
        gzip.decompress(data)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        problem = f"it is not a complete gzip file ({e}); it is probably truncated or damaged"
    else:
        problem = "it decompresses, but its content differs from the official release"
    return (
        f"{path} is not the upstream Fashion-MNIST file {expected.filename}: {problem} "
        f"(size {len(data)} bytes, expected {expected.size} with the upstream header; sha256 mismatch). "
        "Replace it with the official file (or reinstall Debian's package: "
        "apt-get install --reinstall dataset-fashion-mnist)."
    )


def upstream_bytes(path: str, expected: ExpectedFile) -> bytes:
    """Reads `path` and returns the exact upstream bytes, or raises `UserError` explaining why not.

    An upstream file passes through untouched; a file that differs only in its gzip header gets the
    upstream header back. Anything else is rejected.
    """
    with open(path, "rb") as f:
        data = f.read()
    if _sha256(data) == expected.sha256:
        return data
    try:
        restored = restore_upstream(expected.filename, data)
    except ValueError:
        restored = b""
    if _sha256(restored) == expected.sha256:
        return restored
    raise UserError(_explain_mismatch(path, data, expected))


def find_source_dir(source_dir: str) -> str | None:
    """The directory to stage from: `source_dir` if given, else Debian's copy if installed."""
    if source_dir:
        return source_dir
    return DEBIAN_SOURCE_DIR if os.path.isdir(DEBIAN_SOURCE_DIR) else None


def _staged(manual_dir: str, expected: ExpectedFile) -> bool:
    target = os.path.join(manual_dir, expected.filename)
    if not os.path.isfile(target) or os.path.getsize(target) != expected.size:
        return False
    with open(target, "rb") as f:
        return _sha256(f.read()) == expected.sha256


def _from_csv(source_dir: str, expected_files: list[ExpectedFile]) -> dict[str, bytes]:
    """The upstream files rebuilt from Kaggle's CSV pair, which must match tfds' checksums too."""
    rebuilt = {
        name: restore_upstream(name, data)
        for name, data in kaggle.upstream_files(source_dir).items()
    }
    for e in expected_files:
        if _sha256(rebuilt[e.filename]) != e.sha256:
            raise UserError(
                f"The CSV files in {source_dir} hold exactly the upstream Fashion-MNIST, but this "
                f"machine's gzip compresses it differently from the release, so {e.filename} does not "
                "match tfds' registered checksum. Use GNU gzip (apt-get install gzip), or the four "
                "upstream .gz files."
            )
    return rebuilt


def stage(source_dir: str, manual_dir: str, expected_files: Iterable[ExpectedFile]) -> None:
    """Writes the upstream version of every expected file from `source_dir` into `manual_dir`.

    `source_dir` holds the four upstream files (any gzip header) or Kaggle's CSV pair, from which
    they are rebuilt (`kaggle`). Files already staged with the right checksum are left alone;
    writes are atomic (temp + rename), so an interrupted stage never leaves a half-written file that
    looks staged.
    """
    expected_files = [e for e in expected_files if not _staged(manual_dir, e)]
    missing = [
        e.filename
        for e in expected_files
        if not os.path.isfile(os.path.join(source_dir, e.filename))
    ]
    if not missing:
        files = {
            e.filename: upstream_bytes(os.path.join(source_dir, e.filename), e)
            for e in expected_files
        }
    elif kaggle.has_csv_pair(source_dir):
        files = _from_csv(source_dir, expected_files)
    else:
        raise UserError(
            f"Fashion-MNIST source directory {source_dir} lacks {', '.join(missing)}. It must hold the four "
            "upstream files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) or Kaggle's "
            f"{' and '.join(kaggle.CSV_FILES.values())}."
        )
    try:
        os.makedirs(manual_dir, exist_ok=True)
        for expected in expected_files:
            target = os.path.join(manual_dir, expected.filename)
            tmp = f"{target}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(files[expected.filename])
            os.replace(tmp, target)
    except OSError as e:
        raise UserError(
            f"Cannot write the upstream files to {manual_dir}: {e.strerror or e}. Pass a writable "
            "--config.data.tfds_data_dir=DIR, or free space on its disk."
        ) from e
