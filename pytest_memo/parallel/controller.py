"""The controller: forks workers from the collected session, feeds them items, replays reports.

Collection happens once, in the main process.  Workers are forked from it, so they start
in milliseconds with the collected items already in memory.  Each worker asks for no
work: the controller tops its queue up as it reports items done, so no worker idles while
another has a backlog; which items, the ``Scheduler`` decides.  Everything the reporters
see is replayed here, in the main process, through the normal hooks: terminal output,
``--junitxml``, ``--lf`` and the rest behave as in a serial run.
"""

from __future__ import annotations

import gc
import time
from collections import deque
from collections.abc import Sequence

import pytest

from pytest_memo.parallel.channel import Readiness
from pytest_memo.parallel.output import HeldOutput, held_terminal_output
from pytest_memo.parallel.processes import WorkerProcess, fork_worker
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
        self.timeout = timeout
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
                    for worker in ready:
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

    def _wait_time(self) -> float | None:
        return None if self.timeout is None else min(1.0, self.timeout / 4)

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
        self.scheduler.worker_added(worker)

    def _worker_gone(self, worker: WorkerProcess) -> None:
        self.workers.remove(worker)
        self.readiness.forget(worker.results)
        held = self.scheduler.worker_gone(worker)
        worker.close_channels()
        status = worker.reap()
        crashed = not worker.said_bye  # after a clean exit (Stop), unstarted items are dropped
        self._report_finished()  # what it finished, before what it was running
        if crashed and held:
            self._report_crash(held[0], worker, status)
            self.scheduler.requeue(held[1:])
        worker.close_output()
        if crashed and self.scheduler.pending and not self.stopping:
            self._start_workers(1)

    def _report_crash(self, index: int, worker: WorkerProcess, status: str) -> None:
        item = self.session.items[index]
        elapsed = time.monotonic() - worker.started
        if worker.timed_out:
            limit = f"--par-timeout={self.timeout:g}"
            why = f"timed out after {elapsed:.1f} s ({limit}); its worker was stopped"
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
        replay(self.config, item_events(item, [report]))

    def _enforce_timeout(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for worker in self.workers:
            if (
                self.scheduler.holds(worker)
                and not worker.timed_out
                and now - worker.started > self.timeout
            ):
                worker.timed_out = True
                worker.kill()

    def _kill_all(self) -> None:
        for worker in self.workers:
            worker.kill()
        for worker in self.workers:
            worker.reap()
            worker.close_output()
        self.workers.clear()


def _passed(events: Sequence[Event]) -> bool:
    """Whether no report among an item's events failed."""
    return not any(
        isinstance(event, LogReport) and _outcome(event.report) == "failed" for event in events
    )


def _outcome(report: pytest.TestReport | dict[str, object]) -> object:
    return report["outcome"] if isinstance(report, dict) else report.outcome
