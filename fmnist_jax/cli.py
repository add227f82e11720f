"""What every command-line entry point shares: readable logs and errors without tracebacks."""

from __future__ import annotations

import logging as std_logging
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from fmnist_jax.errors import UserError


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
    """Orbax logs every background save at INFO; keep its warnings and errors only."""
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def _keep_compiled_programs() -> None:
    """Caches compiled XLA programs on disk, so a command run again (same config, data shapes and
    JAX) loads its programs instead of compiling them: seconds of every short run. Every program is
    kept (JAX keeps only those that took 1 s), in ~/.cache/fmnist_jax/xla unless the user chose a
    cache (JAX_COMPILATION_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS)."""
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "fmnist_jax", "xla"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run(fn: Callable[[], None]) -> None:
    """Runs `fn`; a `UserError` becomes its message on stderr and exit status 1."""
    logging.get_absl_handler().addFilter(_quiet_orbax)
    # JAX reports each platform it probes and does not find ("Unable to initialize backend 'tpu'"):
    # noise on every healthy CPU or GPU run.
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    _keep_compiled_programs()
    try:
        fn()
    except UserError as e:
        sys.exit(f"error: {e}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with bad flags and config overrides that name no key reported in one line, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}. Pass --helpfull to list the flags and config keys.")
    except (AttributeError, KeyError) as e:
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        hint = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(f"error: unknown config key in {overrides}: {hint} The valid keys are listed in fmnist_jax/config.py.")


def main(fn: Callable[[], None]) -> None:
    """The `__main__` of a command that takes only flags: `parse_flags`, then `run(fn)`."""

    def _main(argv: list[str]) -> None:
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}: every option is a --flag=value.")
        run(fn)
        # Everything is written and closed by now; tearing down the interpreter's modules and XLA's
        # backends would only add ~0.5 s before the prompt returns.
        import jax

        if jax.distributed.is_initialized():
            jax.distributed.shutdown()  # the other processes wait for this one to leave
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    app.run(_main, flags_parser=parse_flags)
