"""Fixtures shared by the test modules in this directory."""

from __future__ import annotations

import os
from pathlib import Path

# pytest-memo imports numpy only when it first needs it.  In-process pytester runs restore
# sys.modules afterwards, and numpy cannot be imported twice in one process: import it
# here, once, before any of them.
import numpy  # noqa: F401
import pytest
from memo_suite import suite

__all__ = ["pytest84", "suite"]

PYTEST84_VARIABLE = "PYTEST_MEMO_PYTEST84_PYTHON"


@pytest.fixture
def pytest84() -> str:
    """The Python of an environment with pytest 8.4 and pytest-memo (``tasks.py test``)."""
    python = os.environ.get(PYTEST84_VARIABLE)
    if not python:
        pytest.skip(
            f"set {PYTEST84_VARIABLE} to the python of an environment with pytest 8.4 and "
            "pytest-memo installed (python3 tasks.py test creates one) to run this test"
        )
    if not Path(python).exists():
        pytest.fail(f"{PYTEST84_VARIABLE}={python}: no such interpreter")
    return python
