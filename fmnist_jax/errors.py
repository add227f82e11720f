"""The one exception type for failures a user can cause and fix.

Anything raised as `UserError` is reported by the CLI as its message alone (no traceback) with a
non-zero exit, so every message must say what went wrong and what to do about it.
"""


class UserError(Exception):
    """A failure caused by the user's input or environment, with a message that says the fix."""
