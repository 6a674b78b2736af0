"""The controller: forks workers from the collected session, feeds them items, replays reports.

Collection happens once, in the main process.  Workers are forked from it, so they start
in milliseconds with the collected items already in memory.  Each worker asks for no
work: the controller tops its queue up as it reports items done, so no worker idles while
another has a backlog; which items, the ``Scheduler`` decides.  Everything the reporters
see is replayed here, in the main process, through the normal hooks: terminal output,
``--junitxml``, ``--lf`` and the rest behave as in a serial run.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections import deque
from collections.abc import Sequence

import pytest

from pytest_memo.parallel.channel import Readiness
from pytest_memo.parallel.output import HeldOutput, held_terminal_output
from pytest_memo.parallel.processes import DUMP_GRACE_SECONDS, WorkerProcess, fork_worker
from pytest_memo.parallel.protocol import (
    Bye,
    End,
    Event,
    Exited,
    Interrupted,
    ItemDone,
    LogReport,
    Run,
    Stop,
    Strayed,
)
from pytest_memo.parallel.replay import item_events, replay
from pytest_memo.parallel.scheduler import Scheduler
from pytest_memo.parallel.spawn import SpawnedWorkers
from pytest_memo.parallel.worker import install_recorder, remove_recorder
from pytest_memo.parallel.worker_coverage import WorkerCoverage

__all__ = ["Controller"]


class Controller:
    def __init__(
        self,
        session: pytest.Session,
        workers: int,
        order: Sequence[int],
        timeout: float | None = None,
        groups: Sequence[Sequence[int]] | None = None,
        spawn: bool = False,
        expected: Sequence[float] | None = None,
        scheduler: Scheduler[WorkerProcess] | None = None,
    ) -> None:
        self.session = session
        self.config = session.config
        # Units of work: single items, or with --par-dist=scope whole modules/classes.
        units = groups if groups is not None else [[index] for index in order]
        self.scheduler: Scheduler[WorkerProcess] = scheduler or Scheduler(
            units, expected or [0.0] * len(session.items), workers
        )
        self.timeout = timeout or None  # 0: none, as in pytest-timeout
        # Per test: pytest-timeout's mark, unless pytest-timeout itself is there to honour it
        # (in the worker, where the test runs).
        self.marked_timeouts: dict[int, float | None] = {}
        if not self.config.pluginmanager.hasplugin("timeout"):
            self.marked_timeouts = _marked_timeouts(session.items)
        self.workers: list[WorkerProcess] = []
        self.readiness: Readiness[WorkerProcess] = Readiness()
        self.stopping = False
        self.stopped_by: Exited | Interrupted | None = None  # a test's pytest.exit(), Ctrl-C
        # Events of finished items, to replay here (passing items wait in line while
        # workers are answered first).
        self.unreported: deque[Sequence[Event]] = deque()
        # What workers measure for coverage.py, combined here when they are done.
        self.coverage = WorkerCoverage.of_this_process()
        self.spawner = (
            SpawnedWorkers(session.config, session.items, self.coverage) if spawn else None
        )

    # -- main loop ------------------------------------------------------------

    def run(self) -> None:
        try:
            with held_terminal_output(self.config) as output:
                if self.spawner is None:
                    install_recorder(self.config)  # inherited by every forked worker
                self._start_workers(self.scheduler.wanted)
                self._dispatch()
                while self.workers or self.unreported:
                    ready = self._ready_workers(output, block=not self.unreported)
                    if self._polls_exits:
                        ready += [w for w in self.workers if w.has_exited() and w not in ready]
                    for worker in dict.fromkeys(ready):  # (its pipe and its end, both ready)
                        if worker in self.workers:
                            self._receive(worker)
                    # One item at a time, so that workers asking for more are answered
                    # between reports, not after the whole backlog.
                    if self.unreported:
                        replay(self.config, self.unreported.popleft())
                    if ready:
                        self._dispatch()
                    self._enforce_timeout()
            match self.stopped_by:
                case Exited(_, reason, returncode):
                    raise pytest.exit.Exception(reason, returncode)
                case Interrupted():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._kill_all()
            self._report_finished()  # the summary counts what ran
            raise
        except BaseException:
            self._kill_all()
            raise
        finally:
            gc.unfreeze()
            self.readiness.close()
            remove_recorder(self.config)
            if self.spawner is not None:
                self.spawner.close()
            if self.coverage is not None:
                self.coverage.combine_workers()

    def _ready_workers(self, output: HeldOutput | None, block: bool) -> list[WorkerProcess]:
        """Workers with a message; if none has one and ``block``, wait for one, after
        writing the terminal output held meanwhile (see pytest_memo.parallel.output)."""
        ready = self.readiness.ready(timeout=0)
        waiting = not ready and block
        if output is not None and (waiting or output.due()):
            output.release()
        if waiting:
            ready = self.readiness.ready(timeout=self._wait_time())
        return ready

    def _report_finished(self) -> None:
        """Replay every finished item not reported yet."""
        while self.unreported:
            replay(self.config, self.unreported.popleft())

    @property
    def _polls_exits(self) -> bool:
        """Whether the ends of workers are polled for, lacking a descriptor that tells."""
        return any(worker.exit_watch is None for worker in self.workers)

    def _wait_time(self) -> float | None:
        limits = [limit for limit in (self.timeout, *self.marked_timeouts.values()) if limit]
        wait = min([1.0, *(limit / 4 for limit in limits)]) if limits else None
        if self._polls_exits or any(worker.timed_out for worker in self.workers):
            wait = min(wait or 0.2, 0.2)
        return wait

    def _dispatch(self) -> None:
        """Stop if -x or --maxfail say so; else top up the workers short of work (new
        ones, those whose last test failed) and tell every worker when none is left."""
        if self.session.shouldfail or self.session.shouldstop:
            self._stop_all()
        for worker in self.workers:
            if self.scheduler.due(worker):
                self._top_up(worker)

    def _top_up(self, worker: WorkerProcess) -> None:
        if worker.ended:
            return
        batch = self.scheduler.next_batch(worker)
        if batch:
            worker.send(Run(batch))
        if not self.scheduler.pending:
            # Say so at once: a worker holding a single item waits to learn whether
            # another follows before it runs it.
            worker.send(End())
            worker.ended = True

    def _stop_all(self) -> None:
        self.stopping = True
        self.scheduler.stop()
        for worker in self.workers:
            if not worker.ended:
                worker.send(Stop())
                worker.ended = True

    # -- messages -------------------------------------------------------------

    def _receive(self, worker: WorkerProcess) -> None:
        # Its end is known from the process, not only from the end of its pipe: a process
        # that one of its tests forked may hold the pipe open.  First whether it ended,
        # then whether a message waits: all it sent before it ended is there to read.
        ended = worker.has_exited()
        if not worker.results.poll():
            if ended:
                self._worker_gone(worker)
            return
        if ended:  # a message it was killed while writing must not block the read
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(worker.results.fileno(), False)
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            self._worker_gone(worker)
            return
        match message:
            case ItemDone(index, events):
                now = time.monotonic()
                self.scheduler.item_done(worker, index, now - worker.started)
                worker.started = now
                if _passed(events):
                    # Send more work first, report later: the worker goes on meanwhile.
                    self._top_up(worker)
                    self.unreported.append(events)
                else:
                    # Reported at once, in order: -x or --maxfail may have to stop the run
                    # before any more work is sent.
                    self._report_finished()
                    replay(self.config, events)
            case Exited() | Interrupted():
                # As serial pytest does: the test is not reported, the run stops (tests
                # running on other workers finish), and the main process raises the same.
                self.stopped_by = message
                self.scheduler.drop(worker)  # the stopping test, and those it would run next
                self._stop_all()
            case Strayed(index, pid):
                self._report_stray(index, pid)
            case Bye(workeroutput):
                worker.said_bye = True
                self.config.hook.pytest_par_worker_output(
                    config=self.config, workeroutput=workeroutput
                )

    # -- workers --------------------------------------------------------------

    def _start_workers(self, count: int) -> None:
        if self.spawner is None:
            for _ in range(count):
                # Each starts on its first batch while the next one is forked.
                worker = fork_worker(
                    self.session, self.workers, self.coverage, self.readiness.close, self._add
                )
                self._top_up(worker)
            return
        for process, connection, output in self.spawner.start(count):
            self._add(
                WorkerProcess(process.pid, connection, connection, process=process, output=output)
            )

    def _add(self, worker: WorkerProcess) -> None:
        self.workers.append(worker)
        self.readiness.watch(worker.results, worker)
        if worker.exit_watch is not None:
            self.readiness.watch_descriptor(worker.exit_watch, worker)
        self.scheduler.worker_added(worker)

    def _worker_gone(self, worker: WorkerProcess) -> None:
        self.workers.remove(worker)
        self.readiness.forget(worker.results)
        if worker.exit_watch is not None:
            self.readiness.forget_descriptor(worker.exit_watch)
        held = self.scheduler.worker_gone(worker)
        crashed = not worker.said_bye  # after a clean exit (Stop), unstarted items are dropped
        if crashed:
            worker.kill()  # what its tests started (its process group), before it is reaped
        worker.close_channels()
        status = worker.reap()
        self._report_finished()  # what it finished, before what it was running
        if crashed and held:
            rerun = self._report_crash(held[0], worker, status)
            self.scheduler.requeue(held if rerun else held[1:])
        worker.close_output()
        if crashed and self.scheduler.pending and not self.stopping:
            self._start_workers(1)

    def _report_crash(self, index: int, worker: WorkerProcess, status: str) -> bool:
        """Report the test that ``worker`` was running when it died; whether a plugin
        (pytest-rerunfailures) asks for it to run again."""
        item = self.session.items[index]
        elapsed = time.monotonic() - worker.started
        if worker.timed_out:
            limit = self._limit_text(index)
            why = (
                f"timed out after {elapsed:.1f} s ({limit}); its worker and the processes its "
                "tests started were stopped (where each thread was: Captured stderr below)"
            )
        else:
            why = f"crashed: its worker process {status}"
        report = pytest.TestReport(
            nodeid=item.nodeid,
            location=item.location,
            keywords=dict.fromkeys(item.keywords, 1),
            outcome="failed",
            longrepr=f"{item.nodeid} {why}; a new worker took over the remaining tests",
            when="call",
            sections=worker.output_so_far(),
            duration=elapsed,
        )
        # pytest-xdist's hook, by which pytest-rerunfailures reruns a crashed test.
        rerun = _CrashedTest(self.config, item.nodeid)
        handle_crash = getattr(self.config.hook, "pytest_handlecrashitem", None)
        if handle_crash is not None:
            handle_crash(crashitem=item.nodeid, report=report, sched=rerun)
        replay(self.config, item_events(item, [report]))
        return rerun.pending

    def _report_stray(self, index: int, pid: int) -> None:
        item = self.session.items[index]
        report = pytest.TestReport(
            nodeid=item.nodeid,
            location=item.location,
            keywords=dict.fromkeys(item.keywords, 1),
            outcome="failed",
            longrepr=(
                f"{item.nodeid}: process {pid}, which this test forked (os.fork, or "
                "multiprocessing with fork), returned into pytest instead of exiting; it was "
                "stopped before it ran any more tests. End a forked child with os._exit()."
            ),
            when="teardown",
            sections=[],
            duration=0.0,
        )
        self._report_finished()
        replay(self.config, item_events(item, [report]))

    def _limit(self, index: int) -> float | None:
        """The time ``index`` may take: its timeout mark's, else --par-timeout's."""
        return self.marked_timeouts.get(index, self.timeout) or None

    def _limit_text(self, index: int) -> str:
        if index in self.marked_timeouts:
            return f"@pytest.mark.timeout({self.marked_timeouts[index]:g})"
        return f"--par-timeout={self.timeout or 0:g}"

    def _enforce_timeout(self) -> None:
        if self.timeout is None and not self.marked_timeouts:
            return
        now = time.monotonic()
        for worker in self.workers:
            held = self.scheduler.holds(worker)
            if worker.timed_out:
                # It was told to write its tracebacks and die; kill it if it did not.
                if now - worker.timeout_signalled > DUMP_GRACE_SECONDS:
                    worker.kill()
                continue
            limit = self._limit(held[0]) if held else None
            if limit is not None and now - worker.started > limit:
                worker.stop_for_timeout()

    def _kill_all(self) -> None:
        for worker in self.workers:
            worker.kill()
        for worker in self.workers:
            worker.reap()
            worker.close_output()
        self.workers.clear()


class _CrashedTest:
    """What pytest-xdist's ``pytest_handlecrashitem`` hook gets as ``sched``: the run's
    config, and ``mark_test_pending`` to run the crashed test again."""

    def __init__(self, config: pytest.Config, nodeid: str) -> None:
        self.config = config
        self.nodeid = nodeid
        self.pending = False

    def mark_test_pending(self, nodeid: str) -> None:
        if nodeid != self.nodeid:
            raise NotImplementedError("only the crashed test can be run again")
        self.pending = True


def _marked_timeouts(items: Sequence[pytest.Item]) -> dict[int, float | None]:
    """pytest-timeout's ``@pytest.mark.timeout(seconds)`` of each item that has it (0 and
    None: no limit), read without pytest-timeout, which is not needed for it."""
    limits: dict[int, float | None] = {}
    for index, item in enumerate(items):
        mark = item.get_closest_marker("timeout")
        if mark is None:
            continue
        seconds = mark.kwargs.get("timeout", mark.args[0] if mark.args else None)
        try:
            limits[index] = float(seconds) if seconds is not None else None
        except (TypeError, ValueError):
            continue
    return limits


def _passed(events: Sequence[Event]) -> bool:
    """Whether no report among an item's events failed."""
    return not any(
        isinstance(event, LogReport) and _outcome(event.report) == "failed" for event in events
    )


def _outcome(report: pytest.TestReport | dict[str, object]) -> object:
    return report["outcome"] if isinstance(report, dict) else report.outcome
