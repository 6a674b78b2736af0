"""Replaying, in the main process, what a test run elsewhere told its reporters.

Events are tuples: ``("logstart", nodeid, location)``, ``("logreport", report)`` where
the report is a TestReport, or ``("logreport", data, became_text)`` with its serialized
form (``became_text``: its representation was turned into text in transit),
``("logfinish", nodeid, location)`` and
``("warning", message, category, filename, lineno, when, nodeid, location)``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

import pytest

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


def item_events(item: pytest.Item, reports: Sequence[pytest.TestReport]) -> list[tuple[Any, ...]]:
    """The events serial pytest would emit for ``item`` with these reports."""
    return [
        ("logstart", item.nodeid, item.location),
        *(("logreport", report) for report in reports),
        ("logfinish", item.nodeid, item.location),
    ]


def warning_event(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    when: str,
    nodeid: str,
    location: Any = None,
) -> tuple[Any, ...]:
    """The event of a warning; the category travels by name, as a picklable string."""
    qualified = f"{category.__module__}:{category.__qualname__}"
    return ("warning", str(message), qualified, filename, lineno, when, nodeid, location)


def replay(config: pytest.Config, events: Sequence[tuple[Any, ...]]) -> None:
    """Call the reporting hooks for ``events``."""
    hook = config.hook
    for event in events:
        kind = event[0]
        if kind == "logstart":
            hook.pytest_runtest_logstart(nodeid=event[1], location=event[2])
        elif kind == "logreport":
            report = event[1]
            if isinstance(report, dict):
                report = hook.pytest_report_from_serializable(config=config, data=report)
                if event[2]:
                    report.longrepr = TextRepresentation(report.longrepr)
            hook.pytest_runtest_logreport(report=report)
        elif kind == "logfinish":
            hook.pytest_runtest_logfinish(nodeid=event[1], location=event[2])
        elif kind == "warning":
            _replay_warning(config, *event[1:])
        elif kind == "suite property":  # record_testsuite_property, for --junitxml
            xml = config.stash.get(xml_key, None)
            if xml is not None:
                xml.add_global_property(event[1], event[2])


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
