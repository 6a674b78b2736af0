"""Helpers for the runner's tests (tests/test_parallel*.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
WITH_CACHE = FLAGS[2:]  # for runs that use recorded durations: kept in pytest's cache


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def start_pytest(pytester: pytest.Pytester, *args: str, **options: Any) -> subprocess.Popen[Any]:
    """pytest in a process of its own, its output (stderr included) on a pipe."""
    command = [sys.executable, "-m", "pytest", *FLAGS, *args]
    return subprocess.Popen(
        command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options
    )
