"""Helpers for the memoized-fixture tests (tests/test_memo*.py): the ``suite`` fixture.

Each test builds a small suite with ``pytester`` whose fixtures append a line to
``calls.txt`` whenever they really compute: counting those lines, not trusting the
plugin's own summary, tells a hit from a miss.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

# ``record`` logs a computation (or, given another file name, what a test saw).  It lives
# in a module of the suite, so suite test modules can import it too.
MEMO_LOG = """\
def record(line, file="calls.txt"):
    with open(file, "a") as log:
        log.write(f"{line}\\n")
"""
# What every suite conftest starts with.
PRELUDE = "import pytest\nfrom memo_log import record\n"

# Plugins a suite does not need: importing hypothesis alone costs a second per subprocess.
SPEED_FLAGS = ("-p", "no:hypothesispytest", "-p", "no:anyio")


class MemoSuite:
    """A pytester directory with shorthand for writing, editing, running and counting."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.path = pytester.path
        pytester.makeini("[pytest]\n")  # pins the rootdir to the suite directory
        pytester.makepyfile(memo_log=MEMO_LOG)

    def write(self, name: str, source: str) -> Path:
        """Write a file (dedented); ``conftest`` sources get :data:`PRELUDE` prepended."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(source).lstrip("\n")
        if path.name == "conftest.py":
            text = PRELUDE + "\n\n" + text
        path.write_text(text)
        return path

    def replace(self, name: str, old: str, new: str) -> None:
        """Edit a file in place; ``old`` must occur in it exactly once."""
        path = self.path / name
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {name}"
        path.write_text(text.replace(old, new))

    def run(self, *args: str) -> pytest.RunResult:
        """pytest in this process: fast; modules are re-imported on every run."""
        return self.pytester.runpytest("-p", "no:cacheprovider", *args)

    def run_subprocess(self, *args: str, timeout: float = 120) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", *SPEED_FLAGS, *args, timeout=timeout
        )

    def lines(self, name: str) -> list[str]:
        path = self.path / name
        return path.read_text().splitlines() if path.exists() else []

    def calls(self) -> list[str]:
        """The computations so far, in order."""
        return self.lines("calls.txt")

    def seen(self) -> list[str]:
        """What the tests recorded with ``record(..., "seen.txt")``."""
        return self.lines("seen.txt")

    def entries(self, store: str = ".pytest_memo") -> list[Path]:
        return sorted((self.path / store).glob("v1/entries/*/*.memo"))


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> MemoSuite:
    # An edit within the same second that keeps a file's size would let cached bytecode
    # (Python's or pytest's assertion rewriting) run the old code.  Write none, here or
    # in subprocesses.
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("PYTEST_MEMO_DIR", raising=False)
    for name in ("PYTEST_MEMO_SECRET", "PYTEST_MEMO_SIGNING_KEY", "PYTEST_MEMO_TRUSTED_KEYS"):
        monkeypatch.delenv(name, raising=False)  # signing is what a test sets up itself
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)  # a suite is a run of its own, not a worker
    assert os.getcwd() == str(pytester.path)
    return MemoSuite(pytester)
