"""Importing a library without the optional modules it would load for nothing in this process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def without(*names: str) -> Iterator[None]:
    """Imports inside see the modules `names` that are not imported yet as not installed (a None
    entry in `sys.modules` makes their import raise ImportError); afterwards they import as usual."""
    absent = [name for name in names if name not in sys.modules]
    sys.modules.update(dict.fromkeys(absent))
    try:
        yield
    finally:
        for name in absent:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
