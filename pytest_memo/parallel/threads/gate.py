"""Which tests run alone, and the gate that lets them.

Most tests run concurrently.  A test runs alone, while no other test runs, when it is
marked ``serial`` (or matches the ``par_serial`` ini option), or when it changes what
every thread shares: it uses one of pytest's fixtures that swap process-wide state, or
it is a doctest.  The main thread passes the gate too when it replays reports, so a test
running alone does not capture the terminal's progress output.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator

import pytest

from pytest_memo.parallel.schedule import marked_serial  # shared with process mode
from pytest_memo.pytest_compat import DoctestItem

__all__ = ["PROCESS_STATE_FIXTURES", "Gate", "changes_process_state", "marked_serial"]

# pytest's fixtures that change what every thread shares: sys.stdout and file descriptors
# 1 and 2 (the capture fixtures, one at a time per process), the root logger's handlers,
# the warnings filters, and whatever monkeypatch patches (modules, os.environ, the cwd).
PROCESS_STATE_FIXTURES = frozenset(
    {
        "capsys",
        "capsysbinary",
        "capfd",
        "capfdbinary",
        "capteesys",
        "caplog",
        "recwarn",
        "monkeypatch",
    }
)


def changes_process_state(item: pytest.Item) -> bool:
    """Whether ``item`` must run alone: it uses one of ``PROCESS_STATE_FIXTURES``, itself or
    through its fixtures, or is a doctest (its runner swaps the process-wide sys.stdout to
    read what an example prints, and pytest shares one runner per module)."""
    if isinstance(item, DoctestItem):
        return True
    return not PROCESS_STATE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


class Gate:
    """Many ordinary tests (and the reporting main thread) at once, or one test alone."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._exclusive = False

    @contextlib.contextmanager
    def passed(self, alone: bool) -> Generator[None, None, None]:
        """Hold the gate for the block: alone, or alongside others not alone."""
        self._enter(alone)
        try:
            yield
        finally:
            self._leave(alone)

    def _enter(self, alone: bool) -> None:
        with self._condition:
            if alone:  # wait for the others to finish, and keep new ones out meanwhile
                self._condition.wait_for(lambda: not self._exclusive and self._running == 0)
                self._exclusive = True
            else:
                self._condition.wait_for(lambda: not self._exclusive)
            self._running += 1

    def _leave(self, alone: bool) -> None:
        with self._condition:
            self._running -= 1
            if alone:
                self._exclusive = False
            self._condition.notify_all()
