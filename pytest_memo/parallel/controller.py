"""The controller: forks workers from the collected session, feeds them items, replays reports.

Collection happens once, in the main process.  Workers are forked from it, so they start
in milliseconds with the collected items already in memory.  Each worker asks for no
work: the controller tops its queue up as it reports items done, so no worker idles while
another has a backlog.  Everything the reporters see is replayed here, in the main
process, through the normal hooks: terminal output, ``--junitxml``, ``--lf`` and the rest
behave as in a serial run.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from pytest_memo.parallel import schedule
from pytest_memo.parallel import worker as protocol
from pytest_memo.parallel.channel import MessageChannel, Readiness, pipe
from pytest_memo.parallel.output import HeldOutput, held_terminal_output
from pytest_memo.parallel.replay import item_events, replay
from pytest_memo.parallel.spawn import SpawnedWorkers
from pytest_memo.parallel.worker import (
    CaptureFiles,
    install_recorder,
    remove_recorder,
    run_worker,
)
from pytest_memo.parallel.worker_coverage import WorkerCoverage

__all__ = ["Controller"]

MAX_BATCH = 64
QUEUED_SECONDS = 0.01  # work a worker holds beyond its current test, when tests are quick


class _Worker:
    # A plain class: a dataclass costs every --par run a millisecond to define.
    def __init__(
        self,
        pid: int,
        commands: MessageChannel,
        results: MessageChannel,
        process: subprocess.Popen[bytes] | None = None,  # spawned, not forked
        output: CaptureFiles | None = None,
    ) -> None:
        self.pid = pid
        self.commands = commands
        self.results = results
        self.process = process
        self.output = output
        self.assigned: deque[int] = deque()
        self.started = time.monotonic()  # start of its current item
        self.ended = False  # END or STOP sent
        self.said_bye = False
        self.timed_out = False

    def output_so_far(self) -> list[tuple[str, str]]:
        """What the test it was running printed, as report sections (nothing if empty)."""
        if self.output is None:
            return []
        sections = []
        for stream, file in zip(("stdout", "stderr"), self.output, strict=True):
            file.seek(0)
            text = file.read().decode("utf-8", "replace")
            if text:
                sections.append((f"Captured {stream} before the worker stopped", text))
        return sections

    def close_output(self) -> None:
        for file in self.output or ():
            file.close()

    def send(self, message: tuple[Any, ...]) -> None:
        # If it died (BrokenPipeError) and its results pipe has not said so yet, the main
        # loop learns it from there, and reports and requeues what it was given.
        with contextlib.suppress(OSError):
            self.commands.send(message)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            return
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> str:
        """Wait for the process to end; say how it ended."""
        if self.process is not None:
            code = self.process.wait()
            return _describe_exit(signal_number=max(-code, 0), code=max(code, 0))
        try:
            status = os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return "ended"
        if os.WIFSIGNALED(status):
            return _describe_exit(signal_number=os.WTERMSIG(status), code=0)
        return _describe_exit(signal_number=0, code=os.WEXITSTATUS(status))


def _raise_like_a_serial_run(stopped_by: tuple[Any, ...]) -> None:
    if stopped_by[0] == "exit":
        raise pytest.exit.Exception(stopped_by[1], stopped_by[2])
    raise KeyboardInterrupt


class Hooks:
    """What the controller needs from the rest of the plugin, kept out of this module."""

    def __init__(
        self,
        worker_finish: Callable[[pytest.Config], Any],  # runs in a worker before it exits
        merge: Callable[[pytest.Config, Any], None],  # runs here with what that returned
    ) -> None:
        self.worker_finish = worker_finish
        self.merge = merge


class Controller:
    def __init__(
        self,
        session: pytest.Session,
        workers: int,
        order: Sequence[int],
        hooks: Hooks,
        timeout: float | None = None,
        groups: Sequence[Sequence[int]] | None = None,
        spawn: bool = False,
        expected: Sequence[float] | None = None,
    ) -> None:
        self.session = session
        self.config = session.config
        # Units of work: single items, or with --par-dist=scope whole modules/classes.
        units = groups if groups is not None else [[index] for index in order]
        self.wanted = max(1, min(workers, len(units)))
        self.pending: deque[list[int]] = deque(list(unit) for unit in units)
        # Seconds each item took on an earlier run (0 when unknown), and their sum over
        # the pending items: batches are cut by expected time as well as by count.
        self.expected = expected or [0.0] * len(session.items)
        self.pending_seconds = sum(self.expected)
        self.long_seconds = schedule.long_test_seconds(self.expected, self.wanted)
        self.hooks = hooks
        self.timeout = timeout
        self.workers: list[_Worker] = []
        self.readiness: Readiness[_Worker] = Readiness()
        self.stopping = False
        self.stopped_by: tuple[Any, ...] | None = None  # a test's pytest.exit() or Ctrl-C
        # Events of finished items, to replay here (passing items wait in line while
        # workers are answered first).
        self.unreported: deque[Sequence[tuple[Any, ...]]] = deque()
        # Wall time a worker takes per item, reports included: a moving average.
        self.seconds_per_item = 0.0
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
                self._start_workers(self.wanted)
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
            if self.stopped_by is not None:
                _raise_like_a_serial_run(self.stopped_by)
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

    def _ready_workers(self, output: HeldOutput | None, block: bool) -> list[_Worker]:
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
        ones, those whose last test failed) and tell every worker when none is left.

        A worker holding more than two items is topped up when it reports its next one:
        sizing a batch for every worker after every message cost this process more
        than anything but reporting."""
        if self.session.shouldfail or self.session.shouldstop:
            self._stop_all()
        for worker in self.workers:
            if len(worker.assigned) <= 2 or not self.pending:
                self._top_up(worker)

    def _top_up(self, worker: _Worker) -> None:
        if worker.ended:
            return
        target = self._target_queue_length()
        # Refill while the worker still holds the item after next: a worker runs an item
        # only once it knows the next one (pytest needs it), so with less in hand it
        # would sit idle for the round trip to this process.
        if self.pending and len(worker.assigned) <= max(2, target // 2):
            batch: list[int] = []
            # A batch holds at most its share of the expected time left, so that a worker
            # given a long test is not given much else with it (see _must_hold); but
            # quick tests fill QUEUED_SECONDS, to keep the worker busy while this process
            # answers.
            share = self.pending_seconds / (4 * self._worker_count())
            budget = max(share, QUEUED_SECONDS)
            while self.pending and len(worker.assigned) + len(batch) < target:
                seconds = self._seconds(self.pending[0])
                held = len(worker.assigned) + len(batch)
                if seconds > budget and not self._must_hold(held, seconds):
                    break
                budget -= seconds
                self.pending_seconds -= seconds
                batch.extend(self.pending.popleft())
            if batch:
                worker.assigned.extend(batch)
                worker.send((protocol.RUN, batch))
        if not self.pending:
            # Say so at once: a worker holding a single item waits to learn whether
            # another follows before it runs it.
            worker.send((protocol.END,))
            worker.ended = True

    def _must_hold(self, held: int, seconds: float) -> bool:
        """Whether a worker holding ``held`` items gets one more of ``seconds``, even
        beyond its share of the time left: it runs an item only once it knows the one
        after, so it holds three (the one it runs, the next, the one after) not to wait
        for this process between tests; but two long tests, one after the other on one
        worker, would stretch the run."""
        return held < 2 or (held < 3 and seconds <= self.long_seconds)

    def _worker_count(self) -> int:
        """Workers of the run, counting those not forked yet (or replacements)."""
        return max(self.wanted, len(self.workers))

    def _seconds(self, unit: Sequence[int]) -> float:
        return sum(self.expected[index] for index in unit)

    def _target_queue_length(self) -> int:
        """How many items a worker should hold, the one it is running included.

        Big batches while much work is left (fewer messages), small ones near the end (no
        worker sits on a backlog while another is idle); 3, so that a worker always knows
        the item after its next, unless that is more than its share of what is left; and,
        for quick tests, enough to keep it busy for ``QUEUED_SECONDS`` while this process
        answers.
        """
        workers = self._worker_count()
        share = len(self.pending) // (4 * workers)
        per_item = self._upcoming_seconds_per_item()
        quick = math.ceil(QUEUED_SECONDS / per_item) if per_item else 0
        target = max(3, min(MAX_BATCH, max(share, quick)))
        # Never beyond an even split of what is left: with a few long tests, one worker
        # holding three would leave another with none.  Quick tests are exempt: a few of
        # them more on one worker cost less than its waits for this process.
        left = len(self.pending) + sum(len(worker.assigned) for worker in self.workers)
        return max(2, min(target, max(quick, math.ceil(left / workers))))

    def _upcoming_seconds_per_item(self) -> float:
        """What each of the next pending items is expected to take: as recorded on an
        earlier run when every one of them has a record, else as measured in this one.

        The measurement is a moving average, slow to follow a change: after a stretch of
        slow tests, quick ones would be handed out one at a time, each worker waiting on a
        round trip to this process between them.
        """
        upcoming = [index for unit in itertools.islice(self.pending, 8) for index in unit]
        recorded = [self.expected[index] for index in upcoming]
        if recorded and all(recorded):
            return sum(recorded) / len(recorded)
        return self.seconds_per_item

    def _stop_all(self) -> None:
        self.stopping = True
        self.pending.clear()
        self.pending_seconds = 0.0
        for worker in self.workers:
            if not worker.ended:
                worker.send((protocol.STOP,))
                worker.ended = True

    # -- messages -------------------------------------------------------------

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.results.recv()
        except (EOFError, OSError):
            self._worker_gone(worker)
            return
        kind = message[0]
        if kind == protocol.ITEM:
            _, index, events = message
            finished = worker.assigned.popleft()
            assert finished == index, (finished, index)
            self._time_item(worker)
            if _passed(events):
                # Send more work first, report later: the worker goes on meanwhile.
                self._top_up(worker)
                self.unreported.append(events)
            else:
                # Reported at once, in order: -x or --maxfail may have to stop the run
                # before any more work is sent.
                self._report_finished()
                replay(self.config, events)
        elif kind == protocol.STOPPED:
            # As serial pytest does: the test is not reported, the run stops (tests
            # running on other workers finish), and the main process raises the same.
            self.stopped_by = message[2]
            worker.assigned.clear()  # the stopping test, and those it would have run next
            self._stop_all()
        elif kind == protocol.BYE:
            worker.said_bye = True
            self.hooks.merge(self.config, message[1])

    def _time_item(self, worker: _Worker) -> None:
        now = time.monotonic()
        elapsed, worker.started = now - worker.started, now
        if self.seconds_per_item == 0.0:
            self.seconds_per_item = elapsed
        self.seconds_per_item += 0.1 * (elapsed - self.seconds_per_item)

    # -- workers --------------------------------------------------------------

    def _start_workers(self, count: int) -> None:
        if self.spawner is None:
            for _ in range(count):
                # Each starts on its first batch while the next one is forked.
                self._top_up(self._fork_worker())
            return
        for process, connection, output in self.spawner.start(count):
            worker = _Worker(process.pid, connection, connection, process=process, output=output)
            self._add(worker)

    def _fork_worker(self) -> _Worker:
        command_reader, command_writer = pipe()
        result_reader, result_writer = pipe()
        # Capture files the worker writes and this process can still read after it died;
        # _Worker.close_output closes them.
        output = None
        if protocol.keeps_crash_output(self.config):
            output = (tempfile.TemporaryFile(), tempfile.TemporaryFile())  # noqa: SIM115
        sys.stdout.flush()
        sys.stderr.flush()
        # Frozen objects are left out of every garbage collection: a worker never scans
        # the collected session it inherits (in test suites that make many objects, full
        # collections over it took over a third of the run) and never writes to its pages,
        # which stay shared with the main process instead of being copied.  The main
        # process keeps them frozen until the run ends, for the same saving.
        gc.freeze()
        # Ctrl-C waits until the worker is on the list, where it is stopped with the rest
        # (a KeyboardInterrupt right after fork would leave it running on its own).
        with _sigint_deferred():
            pid = os.fork()
            if pid == 0:  # the child: keep only its own two ends
                self.readiness.close()
                for other in self.workers:
                    other.commands.close()
                    other.results.close()
                command_writer.close()
                result_reader.close()
                run_worker(
                    self.session,
                    command_reader,
                    result_writer,
                    self.hooks.worker_finish,
                    output,
                    self.coverage,
                )
            command_reader.close()
            result_writer.close()
            worker = _Worker(pid, command_writer, result_reader, output=output)
            self._add(worker)
            return worker

    def _add(self, worker: _Worker) -> None:
        self.workers.append(worker)
        self.readiness.watch(worker.results, worker)

    def _worker_gone(self, worker: _Worker) -> None:
        self.workers.remove(worker)
        self.readiness.forget(worker.results)
        worker.commands.close()
        worker.results.close()
        status = worker.reap()
        crashed = not worker.said_bye  # after a clean exit (STOP), unstarted items are dropped
        self._report_finished()  # what it finished, before what it was running
        if crashed and worker.assigned:
            self._report_crash(worker.assigned.popleft(), worker, status)
            self.pending.extendleft([index] for index in reversed(worker.assigned))
            self.pending_seconds += self._seconds(worker.assigned)
        worker.close_output()
        if crashed and self.pending and not self.stopping:
            self._start_workers(1)

    def _report_crash(self, index: int, worker: _Worker, status: str) -> None:
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
            if worker.assigned and not worker.timed_out and now - worker.started > self.timeout:
                worker.timed_out = True
                worker.kill()

    def _kill_all(self) -> None:
        for worker in self.workers:
            worker.kill()
        for worker in self.workers:
            worker.reap()
            worker.close_output()
        self.workers.clear()


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT back for the block (it is delivered when the block ends); forked
    children start with it held back, and unblock it once they ignore it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _passed(events: Sequence[tuple[Any, ...]]) -> bool:
    """Whether no report among an item's events failed."""
    return not any(kind == "logreport" and _outcome(rest[0]) == "failed" for kind, *rest in events)


def _outcome(report: Any) -> Any:
    return report["outcome"] if isinstance(report, dict) else report.outcome


def _describe_exit(signal_number: int, code: int) -> str:
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"was killed by {name}"
    return f"exited with code {code}"
