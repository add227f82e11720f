"""What every command-line entry point shares: readable logs and errors without tracebacks."""

from __future__ import annotations

import logging as std_logging
import sys
from collections.abc import Callable

from absl import app, flags, logging

from fmnist_jax.errors import UserError


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
    """Orbax logs every background save at INFO; keep its warnings and errors only."""
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def run(fn: Callable[[], None]) -> None:
    """Runs `fn`; a `UserError` becomes its message on stderr and exit status 1."""
    logging.get_absl_handler().addFilter(_quiet_orbax)
    try:
        fn()
    except UserError as e:
        logging.error("%s", e)
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

    app.run(_main, flags_parser=parse_flags)
