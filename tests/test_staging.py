"""Staging the local upstream files: header restore, checksums, clear rejections."""

import gzip
import os
import shutil
import subprocess
import sys

import pytest

from fmnist_jax import data
from fmnist_jax.data import staging
from fmnist_jax.errors import UserError

TRAIN_LABELS = "train-labels-idx1-ubyte.gz"


@pytest.fixture(scope="module")
def expected():
    import tensorflow_datasets as tfds

    infos = tfds.builder_cls(data.DATASET).url_infos.values()
    return {i.filename: staging.ExpectedFile(i.filename, i.size, i.checksum) for i in infos}


@pytest.mark.prepares
def test_debian_files_exist():
    for name in (
        "train-images-idx3-ubyte.gz",
        TRAIN_LABELS,
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        assert os.path.isfile(os.path.join(staging.DEBIAN_SOURCE_DIR, name)), (
            "apt-get install dataset-fashion-mnist"
        )


@pytest.mark.prepares
def test_restored_headers_match_registered_checksums(expected, tmp_path):
    staging.stage(staging.DEBIAN_SOURCE_DIR, str(tmp_path), expected.values())
    for e in expected.values():
        staged = (tmp_path / e.filename).read_bytes()
        assert len(staged) == e.size
        assert staging._sha256(staged) == e.sha256
        # Same data as Debian's file: only the header changed.
        assert gzip.decompress(staged) == gzip.decompress(
            (open(os.path.join(staging.DEBIAN_SOURCE_DIR, e.filename), "rb")).read()
        )


@pytest.mark.prepares
def test_upstream_file_passes_through_unchanged(expected, tmp_path):
    e = expected[TRAIN_LABELS]
    upstream = staging.upstream_bytes(os.path.join(staging.DEBIAN_SOURCE_DIR, TRAIN_LABELS), e)
    path = tmp_path / TRAIN_LABELS
    path.write_bytes(upstream)
    assert staging.upstream_bytes(str(path), e) == upstream


def test_header_parser_skips_optional_fields():
    body = gzip.compress(b"payload", mtime=0)[10:]
    header = (
        b"\x1f\x8b\x08"
        + bytes([2 | 4 | 8 | 16])
        + b"\0\0\0\0\x00\x03"
        + b"\x02\x00ab"
        + b"name\x00"
        + b"comment\x00"
        + b"\x00\x00"
    )
    assert staging.gzip_payload(header + body) == body


@pytest.mark.prepares
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_is_rejected_clearly(expected, tmp_path, damage):
    raw = bytearray((open(os.path.join(staging.DEBIAN_SOURCE_DIR, TRAIN_LABELS), "rb")).read())
    if damage == "flip":
        raw[100] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    source = tmp_path / "src"
    source.mkdir()
    for e in expected.values():
        if e.filename != TRAIN_LABELS:
            shutil.copy(os.path.join(staging.DEBIAN_SOURCE_DIR, e.filename), source)
    (source / TRAIN_LABELS).write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"{TRAIN_LABELS}.*(truncated|differs)") as info:
        staging.stage(str(source), str(tmp_path / "manual"), expected.values())
    assert "apt-get install --reinstall dataset-fashion-mnist" in str(info.value)
    assert not (tmp_path / "manual" / TRAIN_LABELS).exists()


@pytest.mark.prepares
def test_missing_files_are_named(expected, tmp_path):
    with pytest.raises(UserError, match="lacks .*train-images-idx3-ubyte.gz"):
        staging.stage(str(tmp_path), str(tmp_path / "manual"), expected.values())


@pytest.mark.prepares
def test_a_data_dir_that_cannot_be_written_is_one_clear_error(expected, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="Cannot write the upstream files to .*: Not a directory"):
        staging.stage(
            staging.DEBIAN_SOURCE_DIR, str(tmp_path / "file" / "manual"), expected.values()
        )


@pytest.mark.parametrize(
    "flag, named",
    [
        ("--source_dir=/nonexistent", "--source_dir=/nonexistent is not a directory"),
        ("--tfds_data_dir={tmp}/a_file", "Pass a writable --tfds_data_dir=DIR"),
    ],
)
def test_the_prepare_command_names_its_own_flags(tmp_path, flag, named):
    """Preparing is shared with training, whose flags are `--config.data.*`; this command's are not."""
    (tmp_path / "a_file").write_text("not a directory")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist_jax.prepare",
            f"--tfds_data_dir={tmp_path}",
            flag.format(tmp=tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert named in result.stderr and "--config.data." not in result.stderr
