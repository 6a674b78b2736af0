"""Fixtures shared by the test modules in this directory."""

from __future__ import annotations

# pytest-memo imports numpy only when it first needs it.  In-process pytester runs restore
# sys.modules afterwards, and numpy cannot be imported twice in one process: import it
# here, once, before any of them.
import numpy  # noqa: F401
from memo_suite import suite

__all__ = ["suite"]
