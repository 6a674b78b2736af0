"""Thread mode: tests run concurrently in threads of this process.

pytest is not thread-safe, so this mode makes a few rules, documented in docs/parallel.md:

- Test bodies run concurrently.  Fixture setup and teardown run one at a time (a lock),
  so a session or module fixture is created once and shared.  Fixture values are kept
  per test, class, module and parameter, as a serial run makes them (thread_fixtures).
- Each thread has its own setup state.  Fixtures wider than a function are torn down at
  the end of the run, once every thread is done, never while another thread may use them.
- Output written through ``sys.stdout``/``sys.stderr`` is captured per thread and kept
  with its test; output written straight to file descriptors is not captured.
- Warnings are kept with the test whose thread raised them.  Python's warning filters are
  process-wide, so the run's configured filters (``filterwarnings`` ini option, ``-W``)
  apply to every thread, and a test's ``filterwarnings`` marks can only drop warnings
  afterwards ("ignore"); their other actions, "error" among them, do not apply.
- Tests marked ``@pytest.mark.serial`` (or listed in the ``par_serial`` ini option) run
  alone, while no other test runs; so do doctests and tests that use pytest's fixtures
  that change process-wide state (capsys, capfd, caplog, recwarn, monkeypatch).
- Reports are replayed by the main thread, so reporters never run concurrently.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import queue
import re
import sys
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, TextIO

import pytest

from pytest_memo.parallel.replay import item_events, replay, warning_event
from pytest_memo.parallel.threads.fixtures import fixtures_per_context
from pytest_memo.pytest_compat import (
    DoctestItem,
    MultiCapture,
    SetupState,
    apply_warning_filters,
    assertion_util,
    call_and_report,
    parse_warning_filter,
    set_global_capturing,
    set_setup_state,
    setup_state,
)

__all__ = ["ThreadRunner", "warn_of_replaced_protocols"]

_DONE = object()


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


def _changes_process_state(item: pytest.Item) -> bool:
    """Whether ``item`` must run alone: it uses one of ``PROCESS_STATE_FIXTURES``, itself or
    through its fixtures, or is a doctest (its runner swaps the process-wide sys.stdout to
    read what an example prints, and pytest shares one runner per module)."""
    if isinstance(item, DoctestItem):
        return True
    return not PROCESS_STATE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


class _ParentsOnly:
    """Stands for "the next item" at teardown: keep the item's parents set up."""

    def __init__(self, item: pytest.Item) -> None:
        self._chain = item.listchain()[:-1]

    def listchain(self) -> list[Any]:
        return self._chain


class _KeepWiderScopes(SetupState):
    """A thread's setup state.  When the thread moves to another module or class, the
    finalizers of the one it leaves are kept for the end of the run instead of being run:
    other threads may still be using its fixtures."""

    def __init__(self, deferred: list[Callable[[], object]], lock: threading.Lock) -> None:
        super().__init__()
        self._deferred = deferred
        self._deferred_lock = lock

    def setup(self, item: pytest.Item) -> None:
        needed = item.listchain()
        while self.stack and list(self.stack) != needed[: len(self.stack)]:
            _, (finalizers, _) = self.stack.popitem()
            with self._deferred_lock:
                self._deferred.extend(finalizers)
        super().setup(item)


class _PerThread:
    """Put in place of ``session._setupstate``: each thread sees its own."""

    def __init__(self, main: SetupState, factory: Callable[[], SetupState]) -> None:
        self._main = main
        self._factory = factory
        self._local = threading.local()
        self.states: list[SetupState] = []

    def current(self) -> SetupState:
        if threading.current_thread() is threading.main_thread():
            return self._main
        state: SetupState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = self._factory()
            self.states.append(state)
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)


class _ThreadStreams:
    """``sys.stdout``/``sys.stderr`` stand-ins writing to the current thread's buffer."""

    def __init__(self, original: TextIO, local: threading.local, name: str) -> None:
        self._original = original
        self._local = local
        self._name = name

    def write(self, text: str) -> int:
        buffer: io.StringIO | None = getattr(self._local, self._name, None)
        return (buffer if buffer is not None else self._original).write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _ThreadCapture:
    """Per-thread capture of sys.stdout/sys.stderr, attached to the reports as pytest does."""

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


class _ThreadWarnings:
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
            if not sys.warnoptions:  # as pytest does: deprecations are shown in tests
                warnings.filterwarnings("always", category=DeprecationWarning)
                warnings.filterwarnings("always", category=PendingDeprecationWarning)
            apply_warning_filters(
                self.config.getini("filterwarnings"),
                self.config.known_args_namespace.pythonwarnings or [],
            )
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
                if item is None:
                    original(message, category, filename, lineno, file, line)
                elif not _ignored_by_marks(item, str(message), category, filename, lineno):
                    event = warning_event(
                        message, category, filename, lineno, "runtest", item.nodeid
                    )
                    self.local.events.append(event)

            warnings.showwarning = show
            yield

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


class _ThreadAssertions:
    """pytest's assertion explanations ("At index 2 diff: ...") in every thread.

    For the length of each test's protocol, pytest's assertion plugin points two module
    globals at functions made for that test; rewritten ``assert`` statements call them.
    Thread mode runs several tests at once and not that protocol: the globals point at
    dispatchers for the run instead, and each thread keeps the functions the plugin made
    for its test (the plugin's own protocol wrapper makes them, and is closed at once).
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.local = threading.local()
        self.passes_hooked = bool(config.hook.pytest_assertion_pass.get_hookimpls())

    @contextlib.contextmanager
    def installed(self) -> Generator[None, None, None]:
        saved = assertion_util._reprcompare, assertion_util._assertion_pass
        try:
            self._install()
            yield
        finally:
            assertion_util._reprcompare, assertion_util._assertion_pass = saved
            assertion_util._config = None

    def _install(self) -> None:
        assertion_util._reprcompare = self._reprcompare
        # Left unset when no plugin listens: rewritten asserts then skip explaining passes.
        assertion_util._assertion_pass = self._assertion_pass if self.passes_hooked else None
        assertion_util._config = self.config

    def prepare(self, item: pytest.Item) -> None:
        """In the test's thread, before its setup (under the fixture lock)."""
        plugin = self.config.pluginmanager.get_plugin("assertion")
        wrapper = getattr(plugin, "pytest_runtest_protocol", None)
        if wrapper is None:  # -p no:assertion, or --assert=plain
            return
        made = wrapper(item)
        next(made)
        self.local.made = assertion_util._reprcompare, assertion_util._assertion_pass
        made.close()
        self._install()

    def _reprcompare(self, op: str, left: object, right: object) -> str | None:
        explain = getattr(self.local, "made", (None, None))[0]
        return explain(op, left, right) if explain is not None else None

    def _assertion_pass(self, lineno: int, orig: str, expl: str) -> None:
        report = getattr(self.local, "made", (None, None))[1]
        if report is not None:
            report(lineno, orig, expl)


def _user_traceback(error: BaseException) -> str:
    """The traceback of an error in a fixture's teardown, without pytest's frames or ours."""
    internal = ("_pytest", "pytest_memo", "pluggy")
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not any(part in internal for part in Path(frame.filename).parts)
    ]
    shown = traceback.format_list(frames) + traceback.format_exception_only(type(error), error)
    return "".join(shown)


def warn_of_replaced_protocols(config: pytest.Config) -> None:
    """Thread mode runs pytest's own test protocol (setup, call, teardown): plugins that
    replace it (pytest-rerunfailures, flaky) would silently not apply."""
    replacing = sorted(
        {
            impl.plugin_name
            for impl in config.hook.pytest_runtest_protocol.get_hookimpls()
            if not (impl.wrapper or impl.hookwrapper) and impl.plugin_name != "runner"
        }
    )
    if replacing:
        warnings.warn(
            pytest.PytestWarning(
                f"--par-mode=thread runs pytest's own test protocol, so the one of "
                f"{', '.join(replacing)} does not apply; use --par-mode=process"
            ),
            stacklevel=2,
        )


def _ignored_by_marks(
    item: pytest.Item, text: str, category: type[Warning], filename: str, lineno: int
) -> bool:
    """Whether the item's ``filterwarnings`` marks, as pytest stacks them, say "ignore"."""
    filters: list[tuple[str, str, type[Warning], str, int]] = []
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


class _Gate:
    """Many ordinary tests (and the reporting main thread) at once, or one serial test alone."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0
        self._exclusive = False

    def enter(self, alone: bool) -> None:
        with self._condition:
            if alone:
                self._condition.wait_for(lambda: not self._exclusive and self._running == 0)
                self._exclusive = True
            else:
                self._condition.wait_for(lambda: not self._exclusive)
            self._running += 1

    def leave(self, alone: bool) -> None:
        with self._condition:
            self._running -= 1
            if alone:
                self._exclusive = False
            self._condition.notify_all()


class ThreadRunner:
    def __init__(self, session: pytest.Session, workers: int, order: Sequence[int]) -> None:
        self.session = session
        self.config = session.config
        self.workers = max(1, min(workers, len(order)))
        self.pending: deque[int] = deque(order)
        self.pending_lock = threading.Lock()
        self.fixture_lock = threading.RLock()
        self.gate = _Gate()
        self.results: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        patterns = self.config.getini("par_serial")
        self.serial_patterns: list[str] = list(patterns)
        self.warnings = _ThreadWarnings(self.config)
        self.assertions = _ThreadAssertions(self.config)
        self.stopped_by: BaseException | None = None  # what a worker thread raised
        # Tests that run alone though not marked serial: the run's summary says how many.
        self.alone_for_process_state = frozenset(
            index for index in order if _changes_process_state(session.items[index])
        )

    def run(self) -> None:
        deferred: list[Callable[[], object]] = []
        deferred_lock = threading.Lock()
        original_state = setup_state(self.session)
        states = _PerThread(original_state, lambda: _KeepWiderScopes(deferred, deferred_lock))
        set_setup_state(self.session, states)
        restore_capture = self._install_capture()
        by_context = fixtures_per_context(self.session)
        by_context.__enter__()
        threads = [
            threading.Thread(target=self._work, name=f"pytest-par-{n}", daemon=True)
            for n in range(self.workers)
        ]
        try:
            with self.warnings.installed(), self.assertions.installed():
                for thread in threads:
                    thread.start()
                self._report(len(threads))
        except BaseException:
            self.stop.set()
            raise
        finally:
            for thread in threads:
                thread.join()
            restore_capture()
            set_setup_state(self.session, original_state)
            self._teardown(states.states, deferred)
            by_context.__exit__(None, None, None)
        if self.stopped_by is not None:
            raise self.stopped_by  # as in a serial run: "!!! Exit: ... !!!" and its code

    # -- the main thread ------------------------------------------------------

    def _report(self, running: int) -> None:
        while running:
            message = self.results.get()
            if message is _DONE:
                running -= 1
                continue
            # Not while a test runs alone: one with capfd would capture the progress
            # written to the terminal's file descriptor.
            self.gate.enter(alone=False)
            try:
                replay(self.config, message)
            finally:
                self.gate.leave(alone=False)
            if self.session.shouldfail or self.session.shouldstop:
                self.stop.set()

    def _teardown(self, states: list[SetupState], deferred: list[Callable[[], object]]) -> None:
        """Finalize the shared fixtures, now that no thread uses them; errors fail the run."""
        errors = []
        for finalizer in [
            *(lambda s=state: s.teardown_exact(None) for state in states),
            *reversed(deferred),
        ]:
            try:
                finalizer()
            except Exception as error:
                errors.append(error)
        if errors:
            self.session.testsfailed += 1
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            for problem in errors:
                message = f"error while tearing down shared fixtures: {problem!r}"
                if reporter is not None:
                    reporter.write_sep("_", message, red=True)
                    reporter.write(_user_traceback(problem))

    def _install_capture(self) -> Callable[[], None]:
        capture_manager = self.config.pluginmanager.get_plugin("capturemanager")
        if capture_manager is None or not capture_manager.is_globally_capturing():
            return lambda: None  # -s: output goes straight to the terminal
        # pytest's own capture swaps process-wide streams around each test: give it
        # nothing to capture, and capture per thread instead.
        capture_manager.stop_global_capturing()
        set_global_capturing(capture_manager, MultiCapture(in_=None, out=None, err=None))
        capture = _ThreadCapture()
        self.config.pluginmanager.register(capture, "pytest_memo.parallel.thread_capture")
        streams = sys.stdout, sys.stderr
        sys.stdout = _ThreadStreams(streams[0], capture.local, "out")
        sys.stderr = _ThreadStreams(streams[1], capture.local, "err")

        def restore() -> None:
            sys.stdout, sys.stderr = streams
            self.config.pluginmanager.unregister(capture)
            set_global_capturing(capture_manager, None)
            capture_manager.start_global_capturing()
            capture_manager.suspend_global_capture()

        return restore

    # -- worker threads -------------------------------------------------------

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                with self.pending_lock:
                    if not self.pending:
                        return
                    index = self.pending.popleft()
                item = self.session.items[index]
                alone = self._is_serial(index)
                self.gate.enter(alone)
                try:
                    with self.warnings.attributed_to(item) as warned:
                        reports = self._run_item(item)
                finally:
                    self.gate.leave(alone)
                # As in a serial run: the warnings once the test has finished.
                self.results.put([*item_events(item, reports), *warned])
        except BaseException as error:  # pytest.exit() or KeyboardInterrupt in a test, or
            # an error of ours: the main thread raises it once the others have stopped.
            self.stopped_by = self.stopped_by or error
            self.stop.set()
        finally:
            self.results.put(_DONE)

    def _is_serial(self, index: int) -> bool:
        item = self.session.items[index]
        if index in self.alone_for_process_state or item.get_closest_marker("serial") is not None:
            return True
        return any(fnmatch.fnmatch(item.nodeid, pattern) for pattern in self.serial_patterns)

    def _run_item(self, item: pytest.Item) -> list[pytest.TestReport]:
        has_request = hasattr(item, "_request")
        try:
            with self.fixture_lock:
                self.assertions.prepare(item)
                reports = [call_and_report(item, "setup", log=False)]
            if reports[0].passed and not item.config.getoption("setuponly", False):
                reports.append(call_and_report(item, "call", log=False))
            with self.fixture_lock:
                reports.append(
                    call_and_report(item, "teardown", log=False, nextitem=_ParentsOnly(item))
                )
        finally:
            if has_request:  # as pytest does: let the test's fixture values go
                item._request = False  # type: ignore[attr-defined]
                item.funcargs = None  # type: ignore[attr-defined]
        return reports
