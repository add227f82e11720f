"""The one exception type for failures a user can cause and fix.

Anything raised as `UserError` is reported by the CLI as its message alone (no traceback) with a
non-zero exit, so every message must say what went wrong and what to do about it.
"""


class UserError(Exception):
    """A failure caused by the user's input or environment, with a message that says the fix."""


def cannot_write(path: str, error: OSError) -> UserError:
    """The error for an output file the disk or its path does not let a command write."""
    where = f": {error.filename}" if error.filename and error.filename != path else ""
    return UserError(
        f"Cannot write {path}: {error.strerror or error}{where}. Free space on its disk or choose a "
        "writable location, then run the command again; what it saved before is kept."
    )
