"""Thread mode: tests run concurrently in threads of this process.

pytest is not thread-safe, so this mode makes a few rules, documented in docs/parallel.md:

- Test bodies run concurrently.  Fixture setup and teardown run one at a time (a lock),
  so a session or module fixture is created once and shared (``protocol``).  Fixture
  values are kept per test, class, module and parameter, as a serial run makes them
  (``fixtures``).
- Each thread has its own setup state.  Fixtures wider than a function are torn down at
  the end of the run, once every thread is done, never while another thread may use them
  (``shims``).
- Output written through ``sys.stdout``/``sys.stderr`` is captured per thread and kept
  with its test; output written straight to file descriptors is not captured
  (``capture``).
- Log records are kept with the test whose thread logged them (``logs``).
- Warnings are kept with the test whose thread raised them (``warnings``), and assertion
  explanations are those of a serial run (``assertions``).
- Tests marked ``@pytest.mark.serial`` (or listed in the ``par_serial`` ini option) run
  alone, while no other test runs; so do doctests and tests that use pytest's fixtures
  that change process-wide state (``gate``).
- Reports are replayed by the main thread, so reporters never run concurrently.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import traceback
from collections import Counter, deque
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_memo.parallel.replay import item_events, replay
from pytest_memo.parallel.threads.assertions import ThreadAssertions
from pytest_memo.parallel.threads.capture import per_thread_capture
from pytest_memo.parallel.threads.fixtures import fixtures_per_context
from pytest_memo.parallel.threads.gate import Gate, alone_reason, marked_serial
from pytest_memo.parallel.threads.logs import logs_per_thread
from pytest_memo.parallel.threads.protocol import run_item
from pytest_memo.parallel.threads.shims import per_thread_setup_states
from pytest_memo.parallel.threads.warnings import ThreadWarnings

__all__ = ["ThreadRunner"]

_DONE = object()  # a worker thread's last message: it has stopped


class ThreadRunner:
    def __init__(self, session: pytest.Session, workers: int, order: Sequence[int]) -> None:
        self.session = session
        self.config = session.config
        self.workers = max(1, min(workers, len(order)))
        self.pending: deque[int] = deque(order)
        self.pending_lock = threading.Lock()
        self.fixture_lock = threading.RLock()
        self.gate = Gate()
        self.results: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.serial_patterns: list[str] = list(self.config.getini("par_serial"))
        self.warnings = ThreadWarnings(self.config)
        self.assertions = ThreadAssertions(self.config)
        self.stopped_by: BaseException | None = None  # what a worker thread raised
        # Tests that run alone though not marked serial: the run's summary says how many,
        # and why.
        self.alone_reasons = {
            index: reason
            for index in order
            if (reason := alone_reason(session.items[index])) is not None
        }
        self.alone_for_process_state = frozenset(self.alone_reasons)
        self.total = len(order)

    def alone_summary(self) -> str:
        """The summary's line on the tests that ran alone though not marked serial, with
        why, by reason (most first), or "" for none."""
        if not self.alone_reasons:
            return ""
        counts = Counter(self.alone_reasons.values())
        reasons = "; ".join(f"{reason}: {count}" for reason, count in counts.most_common())
        return (
            f"par: {len(self.alone_reasons)} of {self.total} tests ran alone in thread mode, "
            f"as they change what all threads share (process mode runs them in parallel): "
            f"{reasons}"
        )

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._work, name=f"pytest-par-{n}", daemon=True)
            for n in range(self.workers)
        ]
        teardown_errors: list[Exception] = []
        # Left in the reverse order: the threads have stopped before the capture, setup
        # states and fixtures they use are put back, and the shared fixtures are torn
        # down (and their errors reported) while fixtures still keep values per context.
        with contextlib.ExitStack() as stack:
            stack.enter_context(fixtures_per_context(self.session, self.fixture_lock))
            stack.callback(self._report_teardown_errors, teardown_errors)
            stack.enter_context(per_thread_setup_states(self.session, teardown_errors))
            stack.enter_context(per_thread_capture(self.config))
            stack.enter_context(logs_per_thread(self.config))
            stack.enter_context(self._joined(threads))
            stack.enter_context(self.warnings.installed())
            stack.enter_context(self.assertions.installed())
            for thread in threads:
                thread.start()
            self._report(len(threads))
        if self.stopped_by is not None:
            raise self.stopped_by  # as in a serial run: "!!! Exit: ... !!!" and its code

    @contextlib.contextmanager
    def _joined(self, threads: list[threading.Thread]) -> Generator[None, None, None]:
        """Wait for the threads at the end of the block; if it fails, stop them first."""
        try:
            yield
        except BaseException:
            self.stop.set()
            raise
        finally:
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join()

    # -- the main thread ------------------------------------------------------

    def _report(self, running: int) -> None:
        while running:
            message = self.results.get()
            if message is _DONE:
                running -= 1
                continue
            # Not while a test runs alone: one with capfd would capture the progress
            # written to the terminal's file descriptor.
            with self.gate.passed(alone=False):
                replay(self.config, message)
            if self.session.shouldfail or self.session.shouldstop:
                self.stop.set()

    def _report_teardown_errors(self, errors: list[Exception]) -> None:
        """Errors tearing down the shared fixtures fail the run."""
        if not errors:
            return
        self.session.testsfailed += 1
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for problem in errors:
            message = f"error while tearing down shared fixtures: {problem!r}"
            if reporter is not None:
                reporter.write_sep("_", message, red=True)
                reporter.write(_user_traceback(problem))

    # -- worker threads -------------------------------------------------------

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                index = self._next()
                if index is None:
                    return
                self._run(index)
        except BaseException as error:  # pytest.exit() or KeyboardInterrupt in a test, or
            # an error of ours: the main thread raises it once the others have stopped.
            self.stopped_by = self.stopped_by or error
            self.stop.set()
        finally:
            self.results.put(_DONE)

    def _next(self) -> int | None:
        with self.pending_lock:
            return self.pending.popleft() if self.pending else None

    def _run(self, index: int) -> None:
        item = self.session.items[index]
        with (
            self.gate.passed(self._runs_alone(index)),
            self.warnings.attributed_to(item) as warned,
        ):
            reports = run_item(item, self.fixture_lock, self.assertions)
        # As in a serial run: the warnings once the test has finished.
        self.results.put([*item_events(item, reports), *warned])

    def _runs_alone(self, index: int) -> bool:
        if index in self.alone_for_process_state:
            return True
        return marked_serial(self.session.items[index], self.serial_patterns)


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
