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
from typing import Any

import pytest

from pytest_memo.parallel.schedule import marked_serial  # shared with process mode
from pytest_memo.pytest_compat import DoctestItem, fixture_requests

__all__ = [
    "PROCESS_STATE_FIXTURES",
    "Gate",
    "alone_reason",
    "changes_process_state",
    "marked_serial",
]

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

# Plugins' fixtures that do the same: pytest-mock's patches are process-wide (a patch of
# one test would be seen by, and could be left to, the tests running beside it).
PLUGIN_PROCESS_STATE_FIXTURES = {
    name: "pytest-mock"
    for name in ("mocker", "class_mocker", "module_mocker", "package_mocker", "session_mocker")
}

# Markers of tests that must run alone: pytest-asyncio runs a test on an event loop that
# tests of a wider loop scope share, and a loop runs one test at a time.
ALONE_MARKERS = {"asyncio": "asyncio tests (pytest-asyncio: one event loop runs one test)"}


def changes_process_state(item: pytest.Item) -> bool:
    """Whether ``item`` must run alone (see ``alone_reason``)."""
    return alone_reason(item) is not None


def alone_reason(item: pytest.Item) -> str | None:
    """Why ``item`` must run alone, for the run's summary, or None: it is a doctest (its
    runner swaps the process-wide sys.stdout to read what an example prints, and pytest
    shares one runner per module), uses a fixture that changes process-wide state
    (itself or through its fixtures: the summary names the one that brought it in), or
    is marked as a test of a plugin that cannot run two tests at once."""
    if isinstance(item, DoctestItem):
        return "doctests"
    for name in getattr(item, "fixturenames", ()):
        if name in PROCESS_STATE_FIXTURES:
            return f"using {name}{_brought_in_by(item, name)}"
        if name in PLUGIN_PROCESS_STATE_FIXTURES:
            plugin = PLUGIN_PROCESS_STATE_FIXTURES[name]
            return f"using {name} ({plugin}){_brought_in_by(item, name)}"
    for marker, reason in ALONE_MARKERS.items():
        if _marked(item, marker):
            return reason
    return None


def _marked(item: pytest.Item, name: str) -> bool:
    get_marker = getattr(item, "get_closest_marker", None)
    return get_marker is not None and get_marker(name) is not None


def _brought_in_by(item: pytest.Item, name: str) -> str:
    """ " through the fixture that brought ``name`` into the test", or "" when the test
    asks for it itself (an autouse fixture is said to be one, with the module that
    defines it: a plugin's makes every test of the suite run alone)."""
    requested = fixture_requests(item)
    if name in requested.direct:
        return ""
    for first in requested.initial:
        definitions = requested.definitions.get(first, ())
        if name not in _closure(first, requested.definitions):
            continue
        kind = "autouse fixture" if first not in requested.direct else "fixture"
        module = getattr(getattr(definitions[-1], "func", None), "__module__", None)
        where = f" of {module}" if definitions and module else ""
        return f" through the {kind} {first}{where}"
    return ""


def _closure(name: str, definitions: dict[str, Any]) -> set[str]:
    """``name`` and every fixture name it requests, directly or through others."""
    names, pending = {name}, [name]
    while pending:
        for definition in definitions.get(pending.pop(), ()):
            for argname in definition.argnames:
                if argname not in names:
                    names.add(argname)
                    pending.append(argname)
    return names


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
