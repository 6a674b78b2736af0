"""Captured logs per thread: a test's log records are kept with it, not with another's.

pytest's logging plugin keeps a test's records (the "Captured log" sections, ``caplog``)
in two handlers that it attaches to the root logger around each test phase and empties
at its start: with tests running at once, each would record, and empty, the others'
records, and the first to finish would detach the handlers from the others.  For the
run, each worker thread gets handlers of its own, which keep only the records logged in
that thread; the root logger's level is set for the run once (``--log-level``), not
around each test phase, where threads would restore each other's levels.  Records logged
by other threads a test starts are not kept with any test.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Generator
from typing import Any

import pytest

from pytest_memo.pytest_compat import LOGGING_PLUGIN_NAME, log_capture_handler

__all__ = ["logs_per_thread"]

_HANDLERS = ("caplog_handler", "report_handler")


class _ThisThreadOnly(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.get_ident() == self.thread


def _per_thread(original: type, local: threading.local) -> type:
    """A subclass of the logging plugin's class whose handlers, and level, are the worker
    thread's own (the main thread's are the plugin's)."""

    def handler(name: str) -> property:
        def get(self: Any) -> logging.Handler:
            shared: logging.Handler = self.__dict__[name]
            if threading.current_thread() is threading.main_thread():
                return shared
            own: logging.Handler | None = getattr(local, name, None)
            if own is None:
                own = log_capture_handler()
                own.setFormatter(shared.formatter)
                level = self.__dict__["log_level"]
                if level is not None:
                    own.setLevel(level)
                own.addFilter(_ThisThreadOnly())
                setattr(local, name, own)
            return own

        return property(get)

    def log_level(self: Any) -> int | None:
        # Worker threads leave the levels alone: set for the whole run.
        if threading.current_thread() is threading.main_thread():
            level: int | None = self.__dict__["log_level"]
            return level
        return None

    namespace = {name: handler(name) for name in _HANDLERS}
    namespace["log_level"] = property(log_level)
    return type(f"PerThread{original.__name__}", (original,), namespace)


@contextlib.contextmanager
def logs_per_thread(config: pytest.Config) -> Generator[None, None, None]:
    """For the block, each worker thread keeps its own tests' log records."""
    plugin = config.pluginmanager.get_plugin(LOGGING_PLUGIN_NAME)
    if plugin is None or not all(name in vars(plugin) for name in (*_HANDLERS, "log_level")):
        yield
        return
    original = type(plugin)
    root = logging.getLogger()
    root_level = root.level
    level = vars(plugin)["log_level"]
    plugin.__class__ = _per_thread(original, threading.local())
    if level is not None:
        root.setLevel(min(root_level, level))
    try:
        yield
    finally:
        plugin.__class__ = original
        root.setLevel(root_level)
