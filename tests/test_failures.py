"""Hostile and careless use: one writer per workdir, refused runs that change nothing, one-paragraph
errors without tracebacks, clean SIGINT/SIGTERM stops that resume identically, images from strangers."""

import importlib.util
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from conftest import tiny_cli_args
from PIL import Image

from fmnist_jax import inference
from fmnist_jax.errors import UserError
from fmnist_jax.inference import images
from fmnist_jax.records import workdir as workdir_lib
from fmnist_jax.reports import lines
from fmnist_jax.training import train


def _cli(module, *args, env=None, timeout=300, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
        cwd=cwd,
    )


def _assert_one_clear_error(result, *phrases, code=1):
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _epochs(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line)["epoch"] for line in f]


def _wait_for(condition, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not condition():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before the test could act on it"


# --- One writer per workdir ----------------------------------------------------------------------


def test_a_second_lock_on_a_workdir_is_refused_naming_the_holder(tiny_config, tmp_path):
    with workdir_lib.locked(str(tmp_path)):
        workdir_lib.open_workdir(str(tmp_path), tiny_config, lambda: None)  # names the holder
        with pytest.raises(
            UserError, match=rf"in use by another run: .* \(host .*, PID {os.getpid()}, started "
        ):
            with workdir_lib.locked(str(tmp_path)):
                pass


@pytest.mark.slow
def test_concurrent_run_on_one_workdir_is_refused_and_the_first_finishes(mock_tfds_dir, tmp_path):
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmnist_jax.main",
            f"--workdir={tmp_path}",
            *tiny_cli_args(mock_tfds_dir, 60),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (tmp_path / "metrics.jsonl").exists(), first)
    # Paused while the second starts: its 60 epochs take ~1 s, less than a process's start-up.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = _cli("fmnist_jax.main", f"--workdir={tmp_path}", *tiny_cli_args(mock_tfds_dir, 60))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _assert_one_clear_error(
        second, f"Workdir {tmp_path} is in use by another run", f"PID {first.pid}"
    )
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert _epochs(tmp_path) == list(range(1, 61))


# --- Checks before writes ------------------------------------------------------------------------


@pytest.mark.slow
def test_refused_run_leaves_the_workdir_byte_identical(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config, str(tmp_path))
    (tmp_path / "config.json").unlink()
    (tmp_path / "summary.json").unlink()
    before = _snapshot(tmp_path)
    other = tiny_config.copy_and_resolve_references()
    other.model.hidden_sizes = (8,)
    with pytest.raises(
        UserError, match=r"The newest checkpoint in .* different config \(model.hidden_sizes"
    ):
        train.train_and_evaluate(other, str(tmp_path))
    assert _snapshot(tmp_path) == before
    assert (
        train.train_and_evaluate(tiny_config, str(tmp_path))["epochs_run"] == 2
    )  # the matching run still resumes


def test_finished_run_rerun_reports_its_summary_line(tiny_config, tmp_path, caplog):
    summary = train.train_and_evaluate(tiny_config, str(tmp_path))
    with caplog.at_level(logging.INFO):
        assert train.train_and_evaluate(tiny_config, str(tmp_path)) == summary
    assert (
        f"not retraining. Test loss {summary['test_loss']:.4f}, test accuracy {summary['test_accuracy']:.4f}"
        in caplog.text
    )


@pytest.mark.slow
def test_run_that_learns_nothing_warns_naming_the_learning_rate(tiny_config, tmp_path, caplog):
    tiny_config.optimizer.name, tiny_config.optimizer.learning_rate = "sgd", 1e-9
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(tiny_config, str(tmp_path))
    assert (
        "This run did not learn" in caplog.text and "optimizer.learning_rate=1e-09" in caplog.text
    )


# --- One paragraph per failure ------------------------------------------------------------------

# A backend this machine cannot start: CUDA unless a CUDA plugin is installed (the GPU machine).
ABSENT_PLATFORM = (
    "tpu" if any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)) else "cuda"
)


@pytest.mark.slow
def test_bad_inputs_to_training_are_one_paragraph_without_traceback(mock_tfds_dir, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    returns_int = tmp_path / "returns_int.py"
    returns_int.write_text("def get_config():\n    return 42\n")
    base = tiny_cli_args(mock_tfds_dir, 1)
    cases = [
        (
            ["--workdir=" + str(tmp_path / "broken"), *base],
            {},
            ["config.json is damaged", "not valid JSON"],
        ),
        (
            [f"--workdir={tmp_path / 'a'}", "--config=/no/such/config.py"],
            {},
            ["Config file /no/such/config.py does not exist or cannot be read"],
        ),
        (
            [f"--workdir={tmp_path / 'b'}", f"--config={returns_int}"],
            {},
            [f"Config file {returns_int}: its get_config() returned int", "ConfigDict"],
        ),
        (
            [f"--workdir={tmp_path / 'c'}", *base, "--config.model.hidden_sizes=(0,)"],
            {},
            ["model.hidden_sizes must be a tuple of positive integers"],
        ),
        (
            [f"--workdir={tmp_path / 'd'}", *base],
            {"JAX_PLATFORMS": ABSENT_PLATFORM},
            [f"JAX_PLATFORMS={ABSENT_PLATFORM} asks for a backend", "Unset JAX_PLATFORMS"],
        ),
    ]
    for args, env, phrases in cases:
        _assert_one_clear_error(_cli("fmnist_jax.main", *args, env={**os.environ, **env}), *phrases)
    elsewhere = _cli(  # a relative config path from outside the checkout
        "fmnist_jax.main", f"--workdir={tmp_path / 'e'}", "--config=configs/mlp.py", cwd=tmp_path
    )
    _assert_one_clear_error(elsewhere, f"Pass --config={os.path.abspath('configs/mlp.py')}")
    assert (
        not (tmp_path / "c").exists()
        and (tmp_path / "broken" / "config.json").read_text() == "{not json"
    )


def test_the_commands_the_lines_suggest_survive_a_workdir_with_spaces(tmp_path):
    workdir = tmp_path / "my runs"
    summary = {
        "test_loss": 0.4,
        "test_accuracy": 0.85,
        "test_accuracy_seeds": [0.85],
        "test_accuracy_std": 0.0,
        "epochs_run": 1,
        "train_seconds": 0.5,
    }
    line = lines.summary_line(summary, str(workdir), "seeds")
    assert line.endswith(f"tensorboard --logdir='{workdir}'.") and "(1 epoch, 0.5 s" in line
    workdir.mkdir()
    with pytest.raises(UserError, match=f"--workdir='{workdir}'\\)"):
        inference.load(str(workdir))


@pytest.mark.parametrize(
    "code, exception",
    [
        ("def get_config():\n    raise ValueError('my own bug')\n", "ValueError: my own bug"),
        ("def get_config():\n    return 1 / 0\n", "ZeroDivisionError: division by zero"),
        ("def get_config(:\n", "SyntaxError"),
        ("def get_config():\n    return len(1)\n", "TypeError: object of type 'int' has no len()"),
    ],
    ids=["wrapped by absl", "not wrapped", "syntax", "a TypeError of its own"],
)
def test_a_config_files_own_exception_keeps_its_traceback_under_one_line(tmp_path, code, exception):
    raises = tmp_path / "raises.py"
    raises.write_text(code)
    result = _cli("fmnist_jax.main", f"--workdir={tmp_path / 'w'}", f"--config={raises}")
    assert result.returncode == 1 and exception in result.stderr
    assert f'File "{raises}"' in result.stderr and "absl/flags" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: flag --config={raises} failed to load: the exception above arose in that file's code."
    )


@pytest.mark.parametrize(
    "get_config, suffix, message",
    [
        ("get_config()", ":64", "takes 0 positional arguments but 1 was given"),
        ("get_config(batch_size)", "", "missing 1 required positional argument: 'batch_size'"),
    ],
)
def test_a_config_argument_get_config_does_not_take_is_one_line(
    tmp_path, get_config, suffix, message
):
    """`--config=FILE:ARG` calls get_config(ARG) (ml_collections): a mismatch is not the file's bug."""
    config_file = tmp_path / "sized.py"
    config_file.write_text(f"def {get_config}:\n    raise AssertionError('not called')\n")
    result = _cli(
        "fmnist_jax.main", f"--workdir={tmp_path / 'w'}", f"--config={config_file}{suffix}"
    )
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        f"error: --config={config_file}{suffix} cannot call {config_file}'s get_config(): "
    )
    fix = "--config.KEY=VALUE" if suffix else f"--config={config_file}:VALUE"
    assert message in result.stderr and fix in result.stderr
    assert not (tmp_path / "w").exists()


# --- Clean stops ------------------------------------------------------------------------------------


_STOP_EPOCHS = 25


@pytest.fixture(scope="module")
def uninterrupted(mock_tfds_dir, tmp_path_factory):
    """The workdir of the tiny run that the stopped runs must reproduce."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    reference = _cli(
        "fmnist_jax.main", f"--workdir={workdir}", *tiny_cli_args(mock_tfds_dir, _STOP_EPOCHS)
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_stops_in_one_line_and_resumes_identically(
    mock_tfds_dir, uninterrupted, tmp_path, signal_number
):
    args = tiny_cli_args(mock_tfds_dir, _STOP_EPOCHS)
    workdir = tmp_path / "stopped"
    run = subprocess.Popen(
        [sys.executable, "-m", "fmnist_jax.main", f"--workdir={workdir}", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: (workdir / "metrics.jsonl").exists() and len(_epochs(workdir)) >= 3, run)
    run.send_signal(signal_number)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal_number, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("Stopped by")]
    assert (
        f"Stopped by {signal.Signals(signal_number).name}" in line
        and "Re-running the same command resumes" in line
    )
    saved = int(line.split("epoch ")[2].split(" is saved")[0])
    assert 3 <= saved < _STOP_EPOCHS and not (workdir / "summary.json").exists()

    resumed = _cli("fmnist_jax.main", f"--workdir={workdir}", *args)
    assert resumed.returncode == 0 and f"Resuming after epoch {saved}" in resumed.stderr, (
        resumed.stderr[-3000:]
    )
    summary, ref = (json.loads((w / "summary.json").read_text()) for w in (workdir, uninterrupted))
    assert (summary["test_loss"], summary["test_accuracy"]) == (
        ref["test_loss"],
        ref["test_accuracy"],
    )
    assert _epochs(workdir) == list(range(1, _STOP_EPOCHS + 1))


@pytest.mark.slow
def test_ctrl_c_while_compiling_stops_at_once_in_one_line(mock_tfds_dir, tmp_path):
    """The ResNet compiles for seconds at batch 8 on a CPU (a minute and more at its own batch of
    128) with an empty compilation cache: one Ctrl-C there stops the command while compiling, not
    after it (the stop before epoch 1)."""
    workdir, stderr_path = tmp_path / "resnet", tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fmnist_jax.main",
                f"--workdir={workdir}",
                "--config=configs/resnet.py",
                "--config.plots=False",
                f"--config.data.tfds_data_dir={mock_tfds_dir}",
                "--config.data.num_validation=16",
                "--config.batch_size=8",
                "--config.eval_batch_size=16",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla")},
        )
        _wait_for(lambda: "Total Parameters" in stderr_path.read_text(), run)  # then compiles
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
    text = stderr_path.read_text()
    assert run.returncode == 128 + signal.SIGINT, text[-3000:]
    assert "Traceback" not in text and "compiled in" not in text, text[-3000:]
    (line,) = [x for x in text.splitlines() if x.startswith("Stopped by")]
    assert line.startswith("Stopped by SIGINT while compiling, before any training"), line
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


# --- Images from strangers --------------------------------------------------------------------------


def _png_header_only(path, width, height):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_oversized_images_are_refused_by_name_before_decoding(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    _png_header_only(tmp_path / "large.png", 5000, 5000)
    for name in ("bomb.png", "large.png"):
        with pytest.raises(UserError, match=f"{name} .*(was not decoded|above the limit)"):
            images.read(str(tmp_path / name), max_pixels=4_000_000)
    Image.fromarray(np.full((3000, 4000, 3), 200, np.uint8)).save(
        tmp_path / "photo.jpg"
    )  # 12 MP JPEG: decoded at a reduced scale
    assert images.read(str(tmp_path / "photo.jpg"), max_pixels=4_000_000).shape == (28, 28, 1)


def test_predict_takes_directories_and_quoted_wildcards_of_images(tmp_path):
    photos, empty = tmp_path / "photos", tmp_path / "empty"
    photos.mkdir(), empty.mkdir()
    for name in ("b.png", "a.JPG", "notes.txt", "c.jpeg"):
        (photos / name).write_bytes(b"")  # named, not read: files() only finds them
    (photos / "sub.png").mkdir()
    given = [
        str(photos),
        str(photos / "*.png"),
        str(tmp_path / "none*.gif"),
        str(empty),
        str(tmp_path / "plain.png"),
    ]
    found, missing = images.files(given)
    assert found == [
        *(str(photos / n) for n in ("a.JPG", "b.png", "c.jpeg")),
        str(photos / "b.png"),
        str(photos / "sub.png"),  # a match that is a directory: read() reports it by name
        str(tmp_path / "plain.png"),  # a plain path as given: read() says it does not exist
    ]
    assert missing == [
        f"No file matches {tmp_path / 'none*.gif'}.",
        f"Directory {empty} holds no image files (PNG, JPEG, ...).",
    ]


def test_a_symbolic_link_loop_in_a_directory_is_named_and_the_other_images_found(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "shirt.png").write_bytes(b"")
    (photos / "loop.png").symlink_to(photos / "loop.png")  # resolving it raises ELOOP
    found, problems = images.files([str(photos)])
    assert found == [str(photos / "shirt.png")]
    assert len(problems) == 1 and problems[0].startswith(f"{photos / 'loop.png'} could not be read")


@pytest.mark.slow
def test_outputs_that_cannot_be_written_are_one_error_and_the_rerun_writes_them(
    mock_tfds_dir, tmp_path
):
    """A run whose export/ or plots/ cannot be created (a file of that name; a full disk alike) ends
    with one error after its last epoch, its checkpoints complete: the same command then resumes
    after that epoch, trains nothing, and writes what was missing. `evaluate` alike for eval/."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    args = [f"--workdir={workdir}", *tiny_cli_args(mock_tfds_dir, 2), "--config.plots=True"]
    for blocked in ("export", "plots"):  # the second run finds the first's checkpoints
        shutil.rmtree(workdir / blocked, ignore_errors=True)  # written by the run before
        (workdir / blocked).write_text("in the way")
        failed = _cli("fmnist_jax.main", *args)
        _assert_one_clear_error(failed, f"File exists: {workdir / blocked}. Free space")
        assert not (workdir / "summary.json").exists()
        (workdir / blocked).unlink()
    rerun = _cli("fmnist_jax.main", *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming after epoch 2" in rerun.stderr and "epoch   1/2" not in rerun.stderr
    assert (workdir / "plots" / "confusion_matrix.png").exists()
    assert (workdir / "export" / "predict_proba.jax_exported").exists()
    assert (workdir / "summary.json").exists()
    (workdir / "eval").write_text("in the way")
    evaluated = _cli("fmnist_jax.evaluate", f"--workdir={workdir}")
    _assert_one_clear_error(evaluated, f"Cannot write {workdir / 'eval' / 'final'}: ")


@pytest.mark.slow
def test_predict_skips_bombs_and_bad_flags_are_refused_before_work(tiny_config, tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny_config, str(workdir))
    _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    (tmp_path / "photos").mkdir()
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "photos" / "ok.png")
    result = _cli(
        "fmnist_jax.predict",
        f"--workdir={workdir}",
        "--images",
        str(tmp_path / "bomb.png"),
        str(tmp_path / "photos"),  # a directory: its image files
        str(tmp_path / "*.gif"),  # a quoted wildcard that matches nothing
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "bomb.png was not decoded" in result.stderr and result.stdout.startswith("ok.png: ")
    assert f"No file matches {tmp_path / '*.gif'}." in result.stderr
    assert "error: 2 of 3 image(s) could not be read" in result.stderr
    for flag, phrase in [
        ("--random=1000000", "--random=1000000 must be between 0 and"),
        ("--random=-3", "--random=-3 must be between 0 and"),
    ]:
        _assert_one_clear_error(_cli("fmnist_jax.predict", f"--workdir={workdir}", flag), phrase)
    unwritable = _cli(
        "fmnist_jax.predict",
        f"--workdir={workdir}",
        "--test_indices=0",
        f"--output={tmp_path / 'missing' / 'p.png'}",
    )
    _assert_one_clear_error(unwritable, "Cannot write the figure")
    assert unwritable.stdout == ""  # refused before predicting anything
    unnamable = _cli(  # its folder is writable, the file cannot be created: found when drawing
        "fmnist_jax.predict",
        f"--workdir={workdir}",
        "--test_indices=0",
        f"--output={tmp_path / ('x' * 300)}.png",
    )
    _assert_one_clear_error(unnamable, "Cannot write", "File name too long")
    no_class = _cli("fmnist_jax.predict", f"--workdir={workdir}", "--test_indices=0", "--top=0")
    _assert_one_clear_error(no_class, "--top=0 prints no class")
    assert no_class.stdout == ""
