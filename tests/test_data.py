"""The prepared data: tfds preparation in a child process, the verified arrays file, clear errors."""

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_mock_dataset

from fmnist_jax import config as config_lib
from fmnist_jax import data, interrupts, prepare
from fmnist_jax.data import kaggle, staging
from fmnist_jax.errors import UserError


def _data_config(tfds_dir, num_validation=5000):
    cfg = config_lib.default().data
    cfg.tfds_data_dir, cfg.num_validation = str(tfds_dir), num_validation
    return cfg


def test_real_splits_keep_tfds_order_with_validation_first(prepared_tfds_dir):
    splits = data.load(_data_config(prepared_tfds_dir))
    assert (
        splits.train_images.shape == (55_000, 28, 28, 1) and splits.train_images.dtype == np.uint8
    )
    assert splits.val_images.shape == (5_000, 28, 28, 1) and splits.test_images.shape == (
        10_000,
        28,
        28,
        1,
    )
    assert splits.train_labels.dtype == splits.test_labels.dtype == np.int32
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    # tfds' example order is deterministic; validation is its first 5,000 training examples.
    assert splits.val_labels[:10].tolist() == [2, 1, 8, 4, 1, 9, 2, 2, 0, 2]
    assert splits.test_labels[:10].tolist() == [4, 4, 9, 7, 5, 1, 0, 5, 7, 4]
    assert np.bincount(splits.test_labels).tolist() == [1000] * 10
    whole = data.load(_data_config(prepared_tfds_dir, num_validation=0))
    np.testing.assert_array_equal(whole.train_images[:5000], splits.val_images)
    np.testing.assert_array_equal(whole.train_images[5000:], splits.train_images)
    subset = _data_config(prepared_tfds_dir)
    subset.num_train = 1000
    first = data.load(subset)  # the first 1,000 after validation; validation and test unchanged
    np.testing.assert_array_equal(first.train_labels, splits.train_labels[:1000])
    np.testing.assert_array_equal(first.val_labels, splits.val_labels)
    assert first.train_images.shape == (1000, 28, 28, 1) and len(first.test_labels) == 10_000


def test_arrays_that_no_longer_match_are_not_trusted(tmp_path):
    directory = os.path.join(write_mock_dataset(str(tmp_path)), data.DATASET, data.VERSION)
    assert data.read_arrays(directory) is not None
    with open(os.path.join(directory, data.DATASET_INFO_FILE), "a") as f:
        f.write(" ")  # the tfds dataset was prepared again
    assert data.read_arrays(directory) is None
    write_mock_dataset(str(tmp_path))
    arrays, names = data.read_arrays(directory)
    arrays["train_labels"][0] += 1
    np.savez(
        os.path.join(directory, data.ARRAYS_FILE),
        manifest=json.dumps(
            {
                "dataset_info_sha256": data._dataset_info_digest(directory),
                "arrays_sha256": json.loads(
                    str(np.load(os.path.join(directory, data.ARRAYS_FILE))["manifest"])
                )["arrays_sha256"],
                "class_names": names,
            }
        ),
        **arrays,
    )
    assert data.read_arrays(directory) is None


def test_an_arrays_file_compressed_since_reads_the_same(tmp_path):
    directory = os.path.join(write_mock_dataset(str(tmp_path)), data.DATASET, data.VERSION)
    path = os.path.join(directory, data.ARRAYS_FILE)
    arrays, names = data.read_arrays(directory)
    with np.load(path) as f:
        np.savez_compressed(path, **f)  # e.g. to carry it to another machine
    compressed, compressed_names = data.read_arrays(directory)
    assert compressed_names == names and compressed.keys() == arrays.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(compressed[name], array, strict=True)


def test_damaged_arrays_file_is_not_trusted(tmp_path):
    directory = os.path.join(write_mock_dataset(str(tmp_path)), data.DATASET, data.VERSION)
    path = os.path.join(directory, data.ARRAYS_FILE)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    labels_dtype = raw.index(b"'<i4'")  # a header still readable, as int32 -> uint32
    for damaged in (
        raw[: len(raw) // 2],
        raw[:100] + bytes([raw[100] ^ 0xFF]) + raw[101:],
        raw[:labels_dtype] + b"'<u4'" + raw[labels_dtype + 5 :],
    ):
        with open(path, "wb") as f:
            f.write(damaged)
        assert (
            data.read_arrays(directory) is None
        )  # so `prepare` derives it again from the TFRecords


@pytest.mark.prepares
@pytest.mark.slow
def test_corrupt_prepared_dataset_is_a_clear_error(prepared_tfds_dir, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(prepared_tfds_dir, copy)
    (copy / data.DATASET / data.VERSION / data.ARRAYS_FILE).unlink()
    record = next((copy / data.DATASET).rglob("*train.tfrecord*"))
    record.write_bytes(record.read_bytes()[:5000])
    with pytest.raises(UserError, match="cannot be read.*Delete that directory"):
        data.load(_data_config(copy))


def test_a_run_that_must_prepare_names_its_own_flags(tmp_path):
    """Training prepares through the prepare command, whose errors name `--source_dir`."""
    config = _data_config(tmp_path / "tfds")
    config.source_dir = str(tmp_path / "nonexistent")
    with pytest.raises(
        UserError, match="--config.data.source_dir=.*nonexistent is not a directory"
    ):
        data.load(config)


def test_a_stop_while_preparing_is_a_stop_not_a_failure(tmp_path, monkeypatch):
    """Ctrl-C reaches the preparing child too, which leaves at once with 130."""
    monkeypatch.setattr(
        data.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 130, "", "")
    )
    with pytest.raises(interrupts.Stopped, match="Stopped by SIGINT while preparing") as stopped:
        data.load(_data_config(tmp_path / "tfds"))
    assert stopped.value.signal_number == signal.SIGINT


@pytest.mark.prepares
def test_no_data_anywhere_names_both_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "DEBIAN_SOURCE_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(prepare, "_can_reach", lambda url: False)
    with pytest.raises(UserError) as info:
        prepare.prepare_tfds(_data_config(tmp_path / "tfds"))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--config.data.source_dir=DIR" in message


@pytest.mark.prepares
@pytest.mark.slow
def test_preparing_without_tensorflow_says_what_to_install(tmp_path, without_tensorflow):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist_jax.main",
            "--config=configs/mlp.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=without_tensorflow,
    )
    assert result.returncode == 1
    assert (
        "needs TensorFlow" in result.stderr and "pip install 'fmnist_jax[prepare]'" in result.stderr
    )
    assert "Traceback" not in result.stderr


def _upstream_rows(prefix: str) -> np.ndarray:
    """[N, 785] rows (label, pixels) of Debian's copy of an upstream split."""
    with gzip.open(os.path.join(staging.DEBIAN_SOURCE_DIR, f"{prefix}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16)
    with gzip.open(os.path.join(staging.DEBIAN_SOURCE_DIR, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return np.concatenate([labels[:, None], images.reshape(len(labels), -1)], axis=1)


def _write_csv(path, rows: np.ndarray) -> None:
    """What Kaggle's CSV files hold: the bytes np.savetxt writes, in a third of its time."""
    numbers = [str(value) for value in range(256)]
    lines = ["label," + ",".join(f"pixel{i}" for i in range(1, 785))]
    lines += [",".join([numbers[value] for value in row]) for row in rows.tolist()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def kaggle_csv_dir(tmp_path_factory):
    """The real data as Kaggle's CSV pair, its rows shuffled (Kaggle's order is not upstream's)."""
    directory = tmp_path_factory.mktemp("kaggle")
    rng = np.random.default_rng(0)
    for split, name in kaggle.CSV_FILES.items():
        rows = _upstream_rows(kaggle.UPSTREAM_PREFIX[split])
        _write_csv(directory / name, rows[rng.permutation(len(rows))])
    return directory


@pytest.mark.prepares
@pytest.mark.slow
def test_kaggle_csv_pair_stages_the_upstream_files(kaggle_csv_dir, tmp_path):
    """The CSV pair becomes, byte for byte, the four files staged from Debian's copy, which tfds
    checks and prepares (`prepared_tfds_dir` runs that path end to end): the same prepared data."""
    import tensorflow_datasets as tfds

    for split in kaggle.CSV_FILES:
        rows = _upstream_rows(kaggle.UPSTREAM_PREFIX[split])
        with np.load(kaggle.UPSTREAM_ORDER_FILE) as stored:
            np.testing.assert_array_equal(stored[split], kaggle.sorted_order(rows))
    builder = tfds.builder(f"{data.DATASET}:{data.VERSION}", data_dir=str(tmp_path / "tfds"))
    expected = prepare.expected_files(builder)
    staging.stage(str(kaggle_csv_dir), str(tmp_path / "from_csv"), expected)
    staging.stage(staging.DEBIAN_SOURCE_DIR, str(tmp_path / "from_debian"), expected)
    assert len(expected) == 4
    for e in expected:
        staged = (tmp_path / "from_csv" / e.filename).read_bytes()
        assert staged == (tmp_path / "from_debian" / e.filename).read_bytes()
        assert hashlib.sha256(staged).hexdigest() == e.sha256 and len(staged) == e.size


@pytest.mark.parametrize("body", ["1,2,x\n", "1,2\n", "7," + ",".join(["300"] * 784) + "\n"])
def test_csv_that_is_not_rows_of_785_bytes_is_refused(tmp_path, body):
    path = tmp_path / "fashion-mnist_test.csv"
    path.write_text("label," + ",".join(f"pixel{i}" for i in range(1, 785)) + "\n" + body)
    with pytest.raises(UserError, match="is damaged.*rows of 785 integers in 0-255"):
        kaggle.read_csv(str(path))


def _changed(rows: np.ndarray, row: int, column: int) -> np.ndarray:
    rows = rows.copy()
    rows[row, column] = (rows[row, column] + 1) % 10
    return rows


@pytest.mark.prepares
@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda rows: rows[:-1], "holds 9999 examples; Fashion-MNIST's test split has 10000"),
        (lambda rows: _changed(rows, 7, 400), "not hold exactly the upstream Fashion-MNIST test"),
        (lambda rows: _changed(rows, 3, 0), "not hold exactly the upstream Fashion-MNIST test"),
    ],
)
def test_altered_kaggle_csv_is_refused(kaggle_csv_dir, tmp_path, change, message):
    test = kaggle_csv_dir / kaggle.CSV_FILES["test"]
    _write_csv(tmp_path / kaggle.CSV_FILES["test"], change(kaggle.read_csv(str(test))))
    shutil.copy(kaggle_csv_dir / kaggle.CSV_FILES["train"], tmp_path)
    with pytest.raises(UserError, match=message):
        kaggle.upstream_files(str(tmp_path))
