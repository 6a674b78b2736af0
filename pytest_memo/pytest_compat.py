"""Every use of pytest's private API, in one place, so a pytest release touches one file.

pytest 8.4 and 9.x are supported.  Each name here is either one of pytest's private
classes or functions, re-exported, or a small accessor for a private attribute, with the
difference between versions handled inside.  No other module imports ``_pytest``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from typing import Any, NamedTuple

import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io import TerminalWriter
from _pytest.assertion import util as assertion_util
from _pytest.capture import FDCapture, MultiCapture
from _pytest.config import apply_warning_filters, parse_warning_filter
from _pytest.doctest import DoctestItem
from _pytest.junitxml import xml_key
from _pytest.main import wrap_session
from _pytest.mark.structures import MARK_GEN, Mark, MarkDecorator
from _pytest.runner import SetupState, call_and_report

__all__ = [
    "FIXTURE_FINALIZERS_ATTRIBUTE",
    "LOGGING_PLUGIN_NAME",
    "MARK_GEN",
    "DoctestItem",
    "FDCapture",
    "FixtureRequests",
    "Mark",
    "MarkDecorator",
    "MultiCapture",
    "SetupState",
    "TerminalRepr",
    "TerminalWriter",
    "active_fixturedef",
    "all_fixture_definitions",
    "apply_warning_filters",
    "assertion_hooks",
    "assertion_util",
    "call_and_report",
    "compute_session_fixture",
    "fixture_requests",
    "fixture_values_released",
    "global_capturing",
    "higher_scoped_params",
    "is_fixture_definition",
    "item_fixture_definitions",
    "log_capture_handler",
    "parse_warning_filter",
    "requesting_item",
    "set_assertion_hooks",
    "set_global_capturing",
    "set_setup_state",
    "set_writer_stream",
    "setup_state",
    "terminal_writer",
    "tmp_path_factory",
    "wrap_session",
    "writer_stream",
    "xml_key",
]


def is_fixture_definition(obj: object) -> bool:
    """Whether ``obj`` is what ``@pytest.fixture`` returned (pytest 9: a definition
    object; pytest 8.4: the function, marked with an attribute)."""
    return type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(
        obj, "_pytestfixturefunction"
    )


def active_fixturedef(request: Any, name: str) -> Any:
    """The fixture definition that serves ``name`` for this request."""
    return request._get_active_fixturedef(name)


def all_fixture_definitions(session: pytest.Session) -> list[Any]:
    """Every fixture definition registered with the session's fixture manager."""
    manager: Any = session._fixturemanager
    if hasattr(manager, "_get_all_fixture_defs"):  # pytest 9
        return list(manager._get_all_fixture_defs())
    return [d for defs in manager._arg2fixturedefs.values() for d in defs]  # pytest 8.4


def compute_session_fixture(item: pytest.Item, name: str) -> object:
    """Set up the session fixture ``name`` as for ``item``, in a process that runs no
    test (the --par main process): the session is set up first, as for a test, so that
    the fixture's teardown is registered with it and runs when the session finishes."""
    state = item.session._setupstate
    if item.session not in state.stack:
        state.setup(item.session)  # type: ignore[arg-type]
    # The test and its parents look set up (pytest asks a requesting node to be), without
    # running their setup; they are taken off the stack again afterwards.
    added = [node for node in item.listchain() if node not in state.stack]
    for node in added:
        state.stack[node] = ([], None)
    try:
        value = item._request.getfixturevalue(name)  # type: ignore[attr-defined]
    finally:
        for node in added:
            state.stack.pop(node, None)
    # A fresh request for the test: the one used here remembers the fixtures it computed,
    # which thread mode keeps per thread.
    if hasattr(item, "_initrequest"):
        item._initrequest()
    return value


def higher_scoped_params(item: Any) -> tuple[tuple[str, int], ...]:
    """The parameters of ``item`` that belong to fixtures wider than a test (class,
    module, package or session scoped), as sorted (argument name, parameter index)
    pairs: items sharing them share those fixtures' values.  () for none."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return ()
    scopes = getattr(callspec, "_arg2scope", {})
    return tuple(
        sorted(
            (name, index)
            for name, index in callspec.indices.items()
            if getattr(scopes.get(name), "value", "function") != "function"
        )
    )


def setup_state(session: pytest.Session) -> SetupState:
    """The session's stack of set-up nodes and their finalizers."""
    return session._setupstate


def set_setup_state(session: pytest.Session, state: Any) -> None:
    session._setupstate = state


def global_capturing(capture_manager: Any) -> Any:
    """The capture manager's process-wide capture (a MultiCapture), or None."""
    return getattr(capture_manager, "_global_capturing", None)


def set_global_capturing(capture_manager: Any, capture: Any) -> None:
    capture_manager._global_capturing = capture


def terminal_writer(reporter: Any) -> Any:
    """The terminal reporter's writer, or None for a reporter we do not know."""
    return getattr(reporter, "_tw", None)


def writer_stream(writer: Any) -> Any:
    """The stream a terminal writer writes to, or None."""
    return getattr(writer, "_file", None)


def set_writer_stream(writer: Any, stream: Any) -> None:
    writer._file = stream


# -- Thread mode (pytest_memo.parallel.threads) ----------------------------------------


def assertion_hooks() -> tuple[Any, Any]:
    """The functions rewritten ``assert`` statements call: one explains a failed
    comparison, the other reports a passed assert (None when no plugin listens)."""
    return assertion_util._reprcompare, assertion_util._assertion_pass


def set_assertion_hooks(reprcompare: Any, assertion_pass: Any, config: Any) -> None:
    """Point rewritten asserts at these functions; ``config`` is the one they read
    (None: none, as pytest leaves it after a test)."""
    assertion_util._reprcompare = reprcompare
    assertion_util._assertion_pass = assertion_pass
    assertion_util._config = config


@contextlib.contextmanager
def fixture_values_released(item: pytest.Item) -> Generator[None, None, None]:
    """Run the block, then let the test's fixture values go, as pytest's protocol does
    once a test is torn down (an item without a request has none to release)."""
    has_request = hasattr(item, "_request")
    try:
        yield
    finally:
        if has_request:
            item._request = False  # type: ignore[attr-defined]
            item.funcargs = None  # type: ignore[attr-defined]


def requesting_item(request: Any) -> Any:
    """The test a fixture request serves, or None (a request of a wider scope's own)."""
    return getattr(request, "_pyfuncitem", None)


def item_fixture_definitions(item: Any) -> dict[str, Any]:
    """The fixture definitions ``item`` may use, by name ({} for an item without them)."""
    info = getattr(item, "_fixtureinfo", None)
    return dict(info.name2fixturedefs) if info is not None else {}


# The attribute by which pytest's FixtureDef keeps its finalizers (thread mode keeps them
# per context, under this name).
FIXTURE_FINALIZERS_ATTRIBUTE = "_finalizers"


# -- pytest's built-in fixtures -----------------------------------------------------------
# Not private API, but facts about pytest that change with its releases: kept here too.

# Built-in fixtures whose values are different on every run or are live handles.
PYTEST_PER_RUN_FIXTURES = (
    "tmp_path",
    "tmpdir",
    "tmp_path_factory",
    "tmpdir_factory",
    "monkeypatch",
    "capsys",
    "capsysbinary",
    "capfd",
    "capfdbinary",
    "caplog",
    "recwarn",
    "pytestconfig",
    "record_property",
    "record_testsuite_property",
    "record_xml_attribute",
    "cache",
)


# -- Thread mode: who brought a fixture into a test -------------------------------------


class FixtureRequests(NamedTuple):
    """The fixtures a test asks for: ``direct`` by its parameters and usefixtures marks,
    ``initial`` those plus the autouse fixtures, in pytest's order, and the definitions
    of every name in their closure."""

    direct: frozenset[str]
    initial: tuple[str, ...]
    definitions: dict[str, Any]


def fixture_requests(item: Any) -> FixtureRequests:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return FixtureRequests(frozenset(), (), {})
    used = [name for mark in item.iter_markers("usefixtures") for name in mark.args]
    return FixtureRequests(
        frozenset((*info.argnames, *used)), tuple(info.initialnames), dict(info.name2fixturedefs)
    )


def log_capture_handler() -> logging.Handler:
    """A new handler of the kind pytest's logging plugin keeps a test's records with."""
    from _pytest.logging import LogCaptureHandler

    return LogCaptureHandler()


# The name pytest registers its logging plugin under.
LOGGING_PLUGIN_NAME = "logging-plugin"


def tmp_path_factory(config: pytest.Config) -> pytest.TempPathFactory | None:
    """The run's TempPathFactory (pytest's tmp_path plugin), or None when it is disabled."""
    return getattr(config, "_tmp_path_factory", None)
