"""Warnings in thread mode: each is kept with the test whose thread raised it.

Python's warning filters are process-wide, so the run's configured filters
(``filterwarnings`` ini option, ``-W``) apply to every thread, and a test's
``filterwarnings`` marks can only drop warnings afterwards ("ignore"); their other
actions, "error" among them, do not apply.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
from collections.abc import Generator
from typing import Any, TextIO

import pytest

from pytest_memo.parallel.replay import warning_event
from pytest_memo.pytest_compat import apply_warning_filters, parse_warning_filter

__all__ = ["ThreadWarnings", "ignored_by_marks"]


class ThreadWarnings:
    """Warnings raised in worker threads, kept as events of the test each thread runs."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.local = threading.local()

    @contextlib.contextmanager
    def installed(self) -> Generator[None, None, None]:
        """The run's configured filters, as pytest applies them around each test, and a
        ``showwarning`` that files warnings under the current thread's test."""
        if not self.config.pluginmanager.has_plugin("warnings"):  # -p no:warnings
            yield
            return
        with warnings.catch_warnings():
            self._apply_configured_filters()
            original = warnings.showwarning

            def show(
                message: Warning | str,
                category: type[Warning],
                filename: str,
                lineno: int,
                file: TextIO | None = None,
                line: str | None = None,
            ) -> None:
                item: pytest.Item | None = getattr(self.local, "item", None)
                if item is None:  # not raised by a test: shown as it would have been
                    original(message, category, filename, lineno, file, line)
                elif not ignored_by_marks(item, str(message), category, filename, lineno):
                    event = warning_event(
                        message, category, filename, lineno, "runtest", item.nodeid
                    )
                    self.local.events.append(event)

            warnings.showwarning = show
            yield

    def _apply_configured_filters(self) -> None:
        if not sys.warnoptions:  # as pytest does: deprecations are shown in tests
            warnings.filterwarnings("always", category=DeprecationWarning)
            warnings.filterwarnings("always", category=PendingDeprecationWarning)
        apply_warning_filters(
            self.config.getini("filterwarnings"),
            self.config.known_args_namespace.pythonwarnings or [],
        )

    @contextlib.contextmanager
    def attributed_to(self, item: pytest.Item) -> Generator[list[tuple[Any, ...]], None, None]:
        """Warnings raised by this thread in the block: events of ``item``."""
        # pytest starts each test with fresh "once per location" registries; so do we
        # (for every thread at once: the registries are process-wide too).
        reset = getattr(warnings, "_filters_mutated", None)
        if reset is not None:
            reset()
        self.local.item, self.local.events = item, []
        try:
            yield self.local.events
        finally:
            self.local.item = None


def ignored_by_marks(
    item: pytest.Item, text: str, category: type[Warning], filename: str, lineno: int
) -> bool:
    """Whether the item's ``filterwarnings`` marks, as pytest stacks them, say "ignore"."""
    filters: list[tuple[str, str, type[Warning], str, int]] = []
    # As pytest applies them: each filter goes in front of those applied before it.
    for mark in item.iter_markers(name="filterwarnings"):
        for argument in mark.args:
            filters.insert(0, parse_warning_filter(argument, escape=False))
    module = os.path.splitext(os.path.basename(filename))[0]
    for action, message, wanted, module_pattern, wanted_line in filters:
        if (
            (not message or re.match(message, text, re.IGNORECASE))
            and issubclass(category, wanted)
            and (not module_pattern or re.match(module_pattern, module))
            and wanted_line in (0, lineno)
        ):
            return action == "ignore"
    return False
