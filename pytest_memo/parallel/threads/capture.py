"""Output capture per thread.

pytest captures a test's output by swapping the process-wide ``sys.stdout``/``sys.stderr``
(and file descriptors 1 and 2) around it: with tests running at once, each would capture
the others'.  For the run, pytest's global capture is given nothing to capture, and
``sys.stdout``/``sys.stderr`` become stand-ins that write to the current thread's buffer
while it runs a test phase; the buffers become report sections, as pytest makes them.
Output written straight to file descriptors is not captured.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Generator
from typing import Any, TextIO

import pytest

from pytest_memo.pytest_compat import MultiCapture, set_global_capturing

__all__ = ["per_thread_capture"]

PLUGIN_NAME = "pytest_memo.parallel.thread_capture"


class _ThreadStreams:
    """``sys.stdout``/``sys.stderr`` stand-ins writing to the current thread's buffer."""

    def __init__(self, original: TextIO, local: threading.local, name: str) -> None:
        self._original = original
        self._local = local
        self._name = name

    def write(self, text: str) -> int:
        # The main thread, or a worker between tests, writes where the stream did.
        buffer: io.StringIO | None = getattr(self._local, self._name, None)
        return (buffer if buffer is not None else self._original).write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _ThreadCapture:
    """Plugin: each phase of a test in a worker thread writes to fresh buffers, attached
    to its report as pytest attaches captured output."""

    def __init__(self) -> None:
        self.local = threading.local()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._capture(item, "setup"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._capture(item, "call"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        return (yield from self._capture(item, "teardown"))

    def _capture(self, item: pytest.Item, when: str) -> Generator[None, None, None]:
        if threading.current_thread() is threading.main_thread():
            return (yield)
        self.local.out, self.local.err = io.StringIO(), io.StringIO()
        try:
            return (yield)
        finally:
            item.add_report_section(when, "stdout", self.local.out.getvalue())
            item.add_report_section(when, "stderr", self.local.err.getvalue())
            self.local.out = self.local.err = None


@contextlib.contextmanager
def per_thread_capture(config: pytest.Config) -> Generator[None, None, None]:
    """For the block, output is captured per thread instead of by pytest's global capture;
    with ``-s`` (no global capture) output goes straight to the terminal, as serially."""
    capture_manager = config.pluginmanager.get_plugin("capturemanager")
    if capture_manager is None or not capture_manager.is_globally_capturing():
        yield
        return
    with _global_capture_idle(capture_manager):
        capture = _ThreadCapture()
        config.pluginmanager.register(capture, PLUGIN_NAME)
        try:
            with _streams_per_thread(capture.local):
                yield
        finally:
            config.pluginmanager.unregister(capture)


@contextlib.contextmanager
def _global_capture_idle(capture_manager: Any) -> Generator[None, None, None]:
    """pytest's capture swaps process-wide streams around each test: for the block it has
    nothing to capture, then captures again as it did (suspended, between tests)."""
    capture_manager.stop_global_capturing()
    set_global_capturing(capture_manager, MultiCapture(in_=None, out=None, err=None))
    try:
        yield
    finally:
        set_global_capturing(capture_manager, None)
        capture_manager.start_global_capturing()
        capture_manager.suspend_global_capture()


@contextlib.contextmanager
def _streams_per_thread(local: threading.local) -> Generator[None, None, None]:
    streams = sys.stdout, sys.stderr
    sys.stdout = _ThreadStreams(streams[0], local, "out")
    sys.stderr = _ThreadStreams(streams[1], local, "err")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams
