"""What every command-line entry point shares: readable logs and errors without tracebacks."""

from __future__ import annotations

import logging as std_logging
import sys
from collections.abc import Callable

from absl import logging

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
