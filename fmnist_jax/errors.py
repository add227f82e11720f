"""The one exception type for failures a user can cause and fix.

Anything raised as `UserError` is reported by the CLI as its message alone (no traceback) with a
non-zero exit, so every message must say what went wrong and what to do about it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class UserError(Exception):
    """A failure caused by the user's input or environment, with a message that says the fix."""


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turns an OSError while writing `path` (a full disk, a path that cannot be created) into the
    one `UserError` that names it and says what to do."""
    try:
        yield
    except OSError as e:
        where = f": {e.filename}" if e.filename and e.filename != path else ""
        raise UserError(
            f"Cannot write {path}: {e.strerror or e}{where}. Free space on its disk or choose a "
            "writable location, then run the command again; what it saved before is kept."
        ) from e
