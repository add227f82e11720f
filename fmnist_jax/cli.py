"""What every command-line entry point shares: readable logs, errors without tracebacks, clean stops.

A failure a user can fix prints one `error:` paragraph and exits 1. `FMNIST_JAX_TRACEBACK=1` in the
environment prints the traceback behind it too (for bug reports).
"""

from __future__ import annotations

import logging as std_logging
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from absl import app, flags, logging

from fmnist_jax import interrupts
from fmnist_jax.errors import UserError

if TYPE_CHECKING:
    from ml_collections import ConfigDict

TRACEBACK_VARIABLE = "FMNIST_JAX_TRACEBACK"
# The directory above the package: a checkout's root, where configs/ lives (pip install -e).
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
    """Orbax logs every background save at INFO, and a failed write as an error with a traceback per
    thread (hundreds of lines when the disk is full); the failure reaches `checkpoint` as an
    exception and is reported there once. Keep Orbax's warnings only."""
    return "orbax" not in record.pathname or record.levelno == std_logging.WARNING


def _keep_compiled_programs() -> None:
    """Caches compiled XLA programs on disk, so a command run again (same config, data shapes and
    JAX) loads its programs instead of compiling them: seconds of every short run. Every program is
    kept (JAX keeps only those that took 1 s), in ~/.cache/fmnist_jax/xla unless the user chose a
    cache (JAX_COMPILATION_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS). Set as JAX's
    environment, which it reads when imported: a command refused before its work imports no JAX."""
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "fmnist_jax", "xla"),
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if "jax" in sys.modules:  # imported by the command's module, before these were set
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs",
            float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
        )


def _drop_closed_loop_callbacks(unraisable: sys.UnraisableHookArgs) -> None:
    """TensorStore completes a failed Orbax write into an asyncio loop that Orbax already closed; the
    failure itself reaches `checkpoint` and is reported there, so its echo is dropped."""
    if not (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
    ):
        sys.__unraisablehook__(unraisable)


def _backend_error(error: RuntimeError | AssertionError) -> UserError | None:
    """The one error for a platform that JAX cannot start (JAX_PLATFORMS=cuda without a GPU raises a
    bare AssertionError, =tpu without a TPU a chained RuntimeError), or None for any other failure."""
    frames = traceback.extract_tb(error.__traceback__)
    if not (frames and frames[-1].filename.endswith("xla_bridge.py")):
        return None
    detail = str(error).split("\n")[0] or type(error).__name__
    return UserError(
        f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!s} asks for a backend this machine cannot start ({detail}). Unset "
        "JAX_PLATFORMS to use what is present (the CPU at least), or install that backend's jax plugin (e.g. pip install "
        "'jax[cuda13]' for an NVIDIA GPU, 'jax[tpu]' on a Cloud TPU VM)."
    )


def exit_now(status: int, message: str | None = None) -> None:
    """Leaves at once once the logs are out: Orbax's and JAX's threads would print their own
    tracebacks while the interpreter tears down, and the teardown itself takes time (docs/design.md
    measures it). The figure
    workers leave with it."""
    from fmnist_jax.reports import figure_workers

    figure_workers.stop()
    if message:
        print(message, file=sys.stderr)
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _fail(error: UserError) -> None:
    """Exit 1 with the error's paragraph, or with its traceback when FMNIST_JAX_TRACEBACK is set."""
    if os.environ.get(TRACEBACK_VARIABLE):
        raise error
    exit_now(1, f"error: {error}")


def execute(fn: Callable[[], None], clean_stops: bool = True) -> None:
    """Runs `fn`; a `UserError` becomes its message on stderr and exit status 1, a stop (SIGINT,
    SIGTERM) its one line and 128 + the signal's number. With `clean_stops` (commands that train),
    SIGINT and SIGTERM ask `fn` to stop where it checks (`interrupts`); without (commands with nothing
    to finish: predict, evaluate, prepare), they stop it at once."""
    logging.get_absl_handler().addFilter(_quiet_orbax)
    # JAX reports each platform it probes and does not find ("Unable to initialize backend 'tpu'"):
    # noise on every healthy CPU or GPU run.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    _keep_compiled_programs()
    if clean_stops:
        interrupts.install()
    else:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _leave_now)
    sys.unraisablehook = _drop_closed_loop_callbacks
    try:
        fn()
    except UserError as e:
        _fail(e)
    except (RuntimeError, AssertionError) as e:
        error = _backend_error(e)
        if error is None:
            raise
        error.__cause__ = e
        _fail(error)
    except interrupts.Stopped as e:
        exit_now(128 + e.signal_number, str(e))
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, mid-call
        exit_now(
            128 + signal.SIGINT,
            "Stopped at once (second Ctrl-C). Re-running the same command resumes from the newest complete checkpoint.",
        )


def _leave_now(signal_number: int, frame: object) -> None:
    """A stop of a command with nothing to finish. A KeyboardInterrupt could land anywhere, even in
    a garbage-collection callback that swallows it (a traceback, and the command goes on)."""
    exit_now(128 + signal_number, f"Stopped by {signal.Signals(signal_number).name}.")


_RAISED_IN_IT = "the exception above arose in that file's code."


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad flags and config overrides that name no key reported in one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        flag, _, detail = str(e).partition(":")
        if "Error whilst parsing config file" in detail:
            _refuse_get_config_call(e, argv)
            # the user's own code raised: keep its traceback
            sys.exit(f"{detail.strip()}\nerror: {flag} failed to load: {_RAISED_IN_IT}")
        sys.exit(f"error: {e}. Pass --helpfull to list the flags and config keys.")
    except (AttributeError, KeyError) as e:
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        hint = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(
            f"error: unknown config key in {overrides}: {hint} The valid keys are listed in fmnist_jax/config/__init__.py."
        )
    except Exception as e:
        config_file = _raised_in_config_file(e, argv)
        if config_file is None:
            raise
        sys.exit(
            f"{_user_traceback(e, config_file)}error: flag --config={config_file} failed to load: "
            + _RAISED_IN_IT
        )


def _refuse_get_config_call(error: flags.Error, argv: list[str]) -> None:
    """Exits with one line when the config file's `get_config` could not be called with the text
    after `--config=FILE:` (ml_collections passes it as the argument): no frame of the file ran."""
    failed = error
    while failed.__context__ is not None:
        failed = failed.__context__
    value = _config_value(argv)
    if value is None or not isinstance(failed, TypeError) or _raised_in_config_file(failed, argv):
        return
    path, colon, argument = value.partition(":")
    if colon:
        fix = (
            f"Pass --config={path} without ':{argument}', and change settings with "
            "--config.KEY=VALUE"
        )
    else:
        fix = f"Pass its argument after a colon: --config={path}:VALUE"
    sys.exit(
        f"error: --config={value} cannot call {path}'s get_config(): {failed}. The text after a "
        f"colon in --config is get_config's one argument. {fix}."
    )


def _config_value(argv: list[str]) -> str | None:
    """The last `--config=` value in `argv` (the one absl keeps), or None."""
    values = [a.partition("=")[2] for a in argv if a.startswith("--config=")]
    return values[-1] if values else None


def _raised_in_config_file(error: Exception, argv: list[str]) -> str | None:
    """The config file named in `argv` when `error` arose in its code (a bug of the user's, whose
    traceback they need), else None."""
    value = _config_value(argv)
    if value is None:
        return None
    config_file = value.partition(":")[0]
    path = os.path.abspath(config_file)
    raised_in = [f.filename for f in traceback.extract_tb(error.__traceback__)]
    if isinstance(error, SyntaxError):
        raised_in.append(error.filename or "")
    return config_file if any(os.path.abspath(f) == path for f in raised_in) else None


def _user_traceback(error: Exception, config_file: str) -> str:
    """`error`'s traceback from the config file's first frame on (absl's and ours above it say
    nothing to the user)."""
    tb = error.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != os.path.abspath(
        config_file
    ):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def load_config(name: str = "config") -> ConfigDict:
    """The config that the `config_flags.DEFINE_config_file` flag `name` points to; a file that
    cannot be read is one error (ml_collections returns a placeholder that fails on first use)."""
    from ml_collections import ConfigDict, config_flags

    config = getattr(flags.FLAGS, name)
    choose = (
        f"Pass --{name}=configs/mlp.py (or cnn.py, fast.py, resnet.py), or the path of your own "
        "file whose get_config() returns fmnist_jax.config.default() with its changes."
    )
    if config is None:
        raise UserError(f"No config given. {choose}")
    try:
        getattr(config, "keys", None)  # the placeholder raises the loading error here
    except OSError as e:
        path = config_flags.get_config_filename(flags.FLAGS[name])
        beside = os.path.join(_CHECKOUT, path)
        if not os.path.isabs(path) and os.path.isfile(beside):  # run from outside the checkout
            raise UserError(
                f"Config file {path} is not in this directory ({os.getcwd()}): the configs are in "
                f"the checkout fmnist_jax runs from. Pass --{name}={shlex.quote(beside)}, or run "
                f"the command from {shlex.quote(_CHECKOUT)}."
            ) from e
        raise UserError(f"Config file {path} does not exist or cannot be read. {choose}") from e
    if not isinstance(config, ConfigDict):
        path = config_flags.get_config_filename(flags.FLAGS[name])
        raise UserError(
            f"Config file {path}: its get_config() returned {type(config).__name__}, not an "
            f"ml_collections.ConfigDict. {choose}"
        )
    return config


def main(fn: Callable[[], None], clean_stops: bool = True) -> None:
    """The `__main__` of a command that takes only flags: `parse_flags`, then `execute(fn, clean_stops)`."""

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            sys.exit(
                f"error: unexpected arguments {' '.join(argv[1:])}: every option is a --flag=value."
            )
        execute(fn, clean_stops)
        # Everything is written and closed by now; tearing down the interpreter's modules and XLA's
        # backends would only delay the prompt (docs/design.md).
        import jax

        if jax.distributed.is_initialized():
            jax.distributed.shutdown()  # the other processes wait for this one to leave
        exit_now(0)

    app.run(_main, flags_parser=parse_flags)


def test_indices(texts: list[str], n: int, random: int = 0, seed: int = 0) -> list[int]:
    """The test images `--test_indices` (texts) and `--random` ask for, in a test split of `n`
    images; a request that cannot work is one `UserError` naming the flag."""
    import numpy as np  # here: every command imports this module before its flags are parsed

    try:
        indices = [int(i) for i in texts]
    except ValueError as e:
        raise UserError(f"--test_indices must be integers, got {texts}.") from e
    if not 0 <= random <= n:
        raise UserError(f"--random={random} must be between 0 and the test split's {n} images.")
    indices += np.random.default_rng(seed).choice(n, random, replace=False).tolist()
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise UserError(
            f"Test indices {bad} are out of range: the test split has {n} images (0..{n - 1})."
        )
    return indices


def check_output(path: str) -> None:
    """Refuses a figure path (`--output`) that cannot be written, before any work starts: a format
    the figures are not drawn in, something that is not a regular file (a device such as
    /dev/full, a FIFO), or a folder that is missing or not writable."""
    from fmnist_jax.reports import FIGURE_FORMATS

    kind = os.path.splitext(path)[1][1:].lower()
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        problem = "it is a directory"
    elif os.path.exists(path) and not os.path.isfile(path):
        problem = "it is not a regular file (a device, FIFO or socket)"
    elif kind not in FIGURE_FORMATS:
        problem = f"figures are written as {', '.join(f'.{k}' for k in FIGURE_FORMATS)} files"
    elif not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        problem = f"{folder} is not a writable directory"
    else:
        return
    raise UserError(
        f"Cannot write the figure to {path}: {problem}. Pass --output=FILE.png (or .pdf, .svg) "
        "in a writable directory."
    )
