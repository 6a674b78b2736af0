"""Every use of pytest's private API, in one place, so a pytest release touches one file.

pytest 8.4 and 9.x are supported.  Each name here is either one of pytest's private
classes or functions, re-exported, or a small accessor for a private attribute, with the
difference between versions handled inside.  No other module imports ``_pytest``.
"""

from __future__ import annotations

from typing import Any

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
    "MARK_GEN",
    "DoctestItem",
    "FDCapture",
    "Mark",
    "MarkDecorator",
    "MultiCapture",
    "SetupState",
    "TerminalRepr",
    "TerminalWriter",
    "active_fixturedef",
    "all_fixture_definitions",
    "apply_warning_filters",
    "assertion_util",
    "call_and_report",
    "global_capturing",
    "is_fixture_definition",
    "parse_warning_filter",
    "set_global_capturing",
    "set_setup_state",
    "set_writer_stream",
    "setup_state",
    "terminal_writer",
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
