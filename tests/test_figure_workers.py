"""The figure workers: the same figures as drawn in this process, errors that arrive here, and
processes that leave with the one that started them."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboardX.utils import figure_to_image

from fmnist_jax.errors import UserError
from fmnist_jax.reports import figure_workers, plots

_ACCURACIES = {f"class {i}": 0.5 + i / 20 for i in range(10)}
_HISTORY = [
    {"epoch": e, "train_accuracy": 0.6 + e / 20, "val_accuracy": 0.58 + e / 20} for e in (1, 2, 3)
]
for _row in _HISTORY:
    _row |= {"train_loss": 1 - _row["train_accuracy"], "val_loss": 1 - _row["val_accuracy"]}


def test_the_workers_draw_what_this_process_draws(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (25, 28, 28, 1), dtype=np.uint8)
    labels, names = np.arange(25) % 10, [f"class {i}" for i in range(10)]
    images_kwargs = {"images": images, "labels": labels, "class_names": names}
    results = figure_workers.draw(
        [
            ("per_class_accuracy", {"accuracies": _ACCURACIES}, str(tmp_path / "w" / "a.png")),
            ("training_images", images_kwargs, str(tmp_path / "w" / "b.png")),
            ("learning_curves", {"history": _HISTORY}, None),
        ]
    )
    plots.save(plots.per_class_accuracy(_ACCURACIES), str(tmp_path / "here" / "a.png"))
    plots.save(plots.training_images(**images_kwargs), str(tmp_path / "here" / "b.png"))
    for name in ("a.png", "b.png"):
        assert (tmp_path / "w" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
    assert results[:2] == [None, None]
    # What TensorBoard's add_figure showed before the workers drew it.
    expected = figure_to_image(plots.learning_curves(_HISTORY))
    assert results[2].shape == (400, 1000, 3)
    np.testing.assert_array_equal(results[2], np.moveaxis(expected, 0, -1))


def test_a_figure_that_fails_raises_its_own_error_here_and_the_workers_go_on(tmp_path):
    with pytest.raises(TypeError) as failed:  # a bug keeps its type and the worker's traceback
        figure_workers.draw(
            [
                ("per_class_accuracy", {"accuracy": _ACCURACIES}, str(tmp_path / "bug.png")),
                ("per_class_accuracy", {"accuracies": _ACCURACIES}, str(tmp_path / "ok.png")),
            ]
        )
    assert "In the figure worker process" in "".join(failed.value.__notes__)
    assert (tmp_path / "ok.png").exists()  # the task beside it finished
    figure_workers.draw([("learning_curves", {"history": _HISTORY}, str(tmp_path / "c.png"))])
    assert (tmp_path / "c.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "name", ["file/a.png", f"{'x' * 300}.png"], ids=["under a file", "a name too long"]
)
def test_a_figure_that_cannot_be_written_is_a_user_error_naming_its_path(tmp_path, name):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match=r"Cannot write .*\.png: .*writable location"):
        figure_workers.draw(
            [("per_class_accuracy", {"accuracies": _ACCURACIES}, str(tmp_path / name))]
        )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has left
    except FileNotFoundError:
        return False


def test_a_worker_killed_is_one_clear_error_and_the_next_draw_starts_new_ones(tmp_path):
    task = ("per_class_accuracy", {"accuracies": _ACCURACIES}, str(tmp_path / "a.png"))
    figure_workers.draw([task])  # returns once the workers have imported, forked and drawn
    server = figure_workers._workers.process.pid
    os.kill(server, signal.SIGKILL)  # a worker killed mid-run, not at its start
    with pytest.raises(UserError, match="figure worker process ended while drawing"):
        figure_workers.draw([task, task])
    figure_workers.draw([task])
    assert figure_workers._workers.process.pid != server


_LEAVING = """
import os, signal, sys
from fmnist_jax.reports import figure_workers as w
w.start()
signal.signal(signal.SIGINT, signal.SIG_IGN)
os.killpg(0, signal.SIGINT)  # as a Ctrl-C in the terminal would
w.draw([("learning_curves", {"history": %r}, sys.argv[1])])
server = w._workers.process.pid
with open(f"/proc/{server}/task/{server}/children") as f:
    print(server, f.read())
"""


def test_the_workers_ignore_ctrl_c_and_leave_with_the_process_that_started_them(tmp_path):
    started = subprocess.run(
        [sys.executable, "-c", _LEAVING % (_HISTORY,), str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,  # its own process group, for its Ctrl-C
    )
    assert started.stderr == ""
    assert (tmp_path / "c.png").stat().st_size > 1000
    workers = [int(pid) for pid in started.stdout.split()]
    assert len(workers) == figure_workers.NUM_WORKERS  # the server and its fork
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers))


# Fires matplotlib's "this may take a moment" timer at once, as a loaded machine does after 5 s.
_IMPATIENT_TIMERS = """
import threading
_Timer = threading.Timer
threading.Timer = lambda interval, function, *a, **k: _Timer(0, function, *a, **k)
"""


def test_building_the_font_cache_says_nothing_on_the_commands_stderr(tmp_path, monkeypatch, capfd):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_IMPATIENT_TIMERS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))  # no font cache yet
    workers = figure_workers._Workers(1)  # its stderr is this test's, which capfd reads
    task = ("per_class_accuracy", {"accuracies": _ACCURACIES}, str(tmp_path / "a.png"))
    workers.connections[0].send(task)
    assert workers.connections[0].recv() == (True, None)
    workers.connections[0].close()
    workers.process.wait(timeout=60)
    assert list((tmp_path / "matplotlib").glob("fontlist-*.json"))  # it built the cache
    assert capfd.readouterr().err == ""
