"""Figures drawn in two worker processes beside the training process.

matplotlib holds the GIL while it draws, and importing it takes most of a second. Two workers,
started while the training process imports JAX (one of two cores idles then), import matplotlib
there and draw a run's figures side by side; the training process never imports it. Drawing in
the training process instead made the reference command slower (docs/design.md). The workers live as long as the process that
started them (a notebook's runs, a test session's, reuse them) and leave when it does.

    python -m fmnist_jax.reports.figure_workers FD...  # the workers, one per connection FD
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import traceback
from typing import Any

import numpy as np

from fmnist_jax.errors import UserError, writing

NUM_WORKERS = 2

# A figure to draw: the name of a `reports.plots` function, its keyword arguments, and the PNG path
# to save it to, or None for the figure's RGB pixels (for TensorBoard).
Task = tuple[str, dict[str, Any], "str | None"]


class _Workers:
    """The worker processes: one started here, which forks the others once it has imported
    matplotlib (a fork costs far less than a second import), each serving one
    connection."""

    def __init__(self, count: int) -> None:
        pairs = [multiprocessing.Pipe() for _ in range(count)]
        fds = [theirs.fileno() for _, theirs in pairs]
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, *map(str, fds)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=path),
            process_group=0,  # out of the terminal's group: Ctrl-C is the training process's
        )
        for _, theirs in pairs:
            theirs.close()
        self.connections = [ours for ours, _ in pairs]
        self.broken = False

    def alive(self) -> bool:
        """False once one has left: the next draw starts new ones."""
        return self.process.poll() is None and not self.broken

    def send(self, connection: multiprocessing.connection.Connection, task: Task) -> bool:
        try:
            connection.send(task)
            return True
        except OSError:  # that worker has left
            self.broken = True
            return False

    def result(self, connection: multiprocessing.connection.Connection) -> tuple[bool, Any]:
        try:
            return connection.recv()
        except (EOFError, OSError):
            self.broken = True
            return False, _ended()


def _ended() -> UserError:
    return UserError(
        "A figure worker process ended while drawing, so some figures were not written. "
        "Re-running the same command draws them again; what the run saved before is kept."
    )


_lock = threading.Lock()
_workers: _Workers | None = None


def start() -> None:
    """Starts the workers, unless they run (then it costs nothing): call it early, so they import
    matplotlib while the caller does other work."""
    with _lock:
        _start()


def _start() -> _Workers:
    global _workers
    if _workers is None or not _workers.alive():
        if _workers is not None:
            for connection in _workers.connections:
                connection.close()  # the old workers that live on leave
        _workers = _Workers(NUM_WORKERS)
    return _workers


def stop() -> None:
    """Ends the workers now, for a command that leaves: nothing is drawn between draws, and one that
    fails before its figures would otherwise hold its stderr open until they import matplotlib."""
    if _workers is not None and _workers.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # they left since
            os.killpg(_workers.process.pid, signal.SIGTERM)  # the server and its forks


def draw(tasks: list[Task]) -> list[np.ndarray | None]:
    """Draws `tasks`, each on the first free worker; returns their results in order (None for a
    saved PNG). The first task that failed raises its exception here, once every task sent has
    finished."""
    with _lock:
        workers = _start()
        results: list[Any] = [None] * len(tasks)
        waiting = list(enumerate(tasks))
        busy: dict[multiprocessing.connection.Connection, int] = {}
        errors: list[BaseException] = []

        def give(connection: multiprocessing.connection.Connection) -> None:
            if waiting and not errors:
                index, task = waiting.pop(0)
                if workers.send(connection, task):
                    busy[connection] = index
                else:
                    errors.append(_ended())

        for connection in workers.connections:
            give(connection)
        while busy:
            for connection in multiprocessing.connection.wait(list(busy)):
                index = busy.pop(connection)
                ok, value = workers.result(connection)
                if ok:
                    results[index] = value
                    give(connection)
                else:
                    errors.append(value)
        if errors:
            raise errors[0]
        return results


def _draw(plots: Any, task: Task) -> np.ndarray | None:
    name, kwargs, path = task
    figure = getattr(plots, name)(**kwargs)
    if path is not None:
        with writing(path):
            plots.save(figure, path)
        return None
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plots.plt.close(figure)
    return pixels


def _serve(plots: Any, fd: int) -> None:
    """Draws each task the connection on `fd` brings, answering (True, result) or (False, the
    exception), until the training process closes it."""
    connection = multiprocessing.connection.Connection(fd)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[bool, Any] = (True, _draw(plots, task))
        except Exception as e:
            e.add_note(f"In the figure worker process:\n{traceback.format_exc()}")
            answer = (False, e)
        try:
            connection.send(answer)
        except OSError:  # the training process left
            return
        except Exception:  # an exception that does not pickle: its text, then
            connection.send((False, RuntimeError(traceback.format_exc())))


def _main(fds: list[int]) -> None:
    """Imports matplotlib once, forks a worker for each connection after the first, serves that."""
    # Idle cores first: the training process's imports and compiles are what a user waits for.
    os.nice(10)
    # matplotlib's first import on a machine builds its font cache and, past 5 s (a loaded 2-core
    # machine), says so on the command's stderr, often after the command has ended.
    logging.getLogger("matplotlib.font_manager").addFilter(
        lambda record: "building the font cache" not in record.getMessage()
    )
    from fmnist_jax.reports import plots

    for i, fd in enumerate(fds[1:], start=1):
        if os.fork() == 0:
            for other in (fds[0], *fds[i + 1 :]):  # those before were closed before the fork
                os.close(other)
            _serve(plots, fd)
            os._exit(0)
        os.close(fd)
    _serve(plots, fds[0])


if __name__ == "__main__":
    _main([int(fd) for fd in sys.argv[1:]])
