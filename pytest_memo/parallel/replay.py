"""Replaying, in the main process, what a test run elsewhere told its reporters.

The events are the named types of ``pytest_memo.parallel.protocol``: ``LogStart``,
``LogReport`` (a TestReport, or its serialized form from a worker process),
``LogFinish``, ``WarningEvent`` and ``SuiteProperty``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

import pytest

from pytest_memo.parallel.protocol import (
    Event,
    LogFinish,
    LogReport,
    LogStart,
    SuiteProperty,
    WarningEvent,
)
from pytest_memo.pytest_compat import TerminalRepr, TerminalWriter, xml_key

__all__ = ["TextRepresentation", "item_events", "replay", "warning_event"]


class TextRepresentation(TerminalRepr):
    """A failure's representation that travelled as text and, like the doctest or plugin
    representation it came from, has no one-line crash message: pytest's short summary
    shows a plain string's text as the message (``FAILED mod.py::f - 002 ...``), serial
    pytest shows none for these."""

    def __init__(self, text: str) -> None:
        self.text = text

    def toterminal(self, writer: TerminalWriter) -> None:
        for line in self.text.splitlines():
            writer.line(line)

    def __str__(self) -> str:
        return self.text


def item_events(item: pytest.Item, reports: Sequence[pytest.TestReport]) -> list[Event]:
    """The events serial pytest would emit for ``item`` with these reports."""
    return [
        LogStart(item.nodeid, item.location),
        *(LogReport(report) for report in reports),
        LogFinish(item.nodeid, item.location),
    ]


def warning_event(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    when: str,
    nodeid: str,
    location: Any = None,
) -> WarningEvent:
    """The event of a warning; the category travels by name, as a picklable string."""
    qualified = f"{category.__module__}:{category.__qualname__}"
    return WarningEvent(str(message), qualified, filename, lineno, when, nodeid, location)


def replay(config: pytest.Config, events: Sequence[Event]) -> None:
    """Call the reporting hooks for ``events``."""
    hook = config.hook
    for event in events:
        match event:
            case LogStart(nodeid, location):
                hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
            case LogReport(report, became_text):
                if isinstance(report, dict):
                    report = hook.pytest_report_from_serializable(config=config, data=report)
                    if became_text:
                        report.longrepr = TextRepresentation(report.longrepr)
                hook.pytest_runtest_logreport(report=report)
            case LogFinish(nodeid, location):
                hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
            case WarningEvent():
                _replay_warning(config, *event)
            case SuiteProperty(name, value):  # record_testsuite_property, for --junitxml
                xml = config.stash.get(xml_key, None)
                if xml is not None:
                    xml.add_global_property(name, value)


def _replay_warning(
    config: pytest.Config,
    message: str,
    category: str,
    filename: str,
    lineno: int,
    when: str,
    nodeid: str,
    location: Any,
) -> None:
    warning_class = _warning_category(category)
    record = warnings.WarningMessage(warning_class(message), warning_class, filename, lineno)
    config.hook.pytest_warning_recorded.call_historic(
        kwargs={"warning_message": record, "when": when, "nodeid": nodeid, "location": location}
    )


def _warning_category(name: str) -> type[Warning]:
    module, _, qualname = name.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return UserWarning
    return found if isinstance(found, type) and issubclass(found, Warning) else UserWarning
