"""The controller's side of a worker process: its channels, how to fork one, stop one,
and say how it ended."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from pytest_memo.parallel.channel import MessageChannel, pipe
from pytest_memo.parallel.protocol import ToWorker
from pytest_memo.parallel.worker import CaptureFiles, keeps_crash_output, run_worker

if TYPE_CHECKING:
    import pytest

    from pytest_memo.parallel.worker_coverage import WorkerCoverage

__all__ = ["WorkerProcess", "fork_worker"]


class WorkerProcess:
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
        self.started = time.monotonic()  # start of its current item
        self.ended = False  # End or Stop sent
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

    def send(self, message: ToWorker) -> None:
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

    def close_channels(self) -> None:
        self.commands.close()
        self.results.close()


def fork_worker(
    session: pytest.Session,
    others: Iterable[WorkerProcess],
    coverage: WorkerCoverage | None,
    close_in_child: Callable[[], None],
    add: Callable[[WorkerProcess], None],
) -> WorkerProcess:
    """Fork a worker from this process, which runs the session's items it is sent.

    ``others``: the workers already running, whose channels the child closes, as it
    calls ``close_in_child`` (the controller's selector); ``add`` puts the new worker on
    the controller's list."""
    command_reader, command_writer = pipe()
    result_reader, result_writer = pipe()
    # Capture files the worker writes and this process can still read after it died;
    # WorkerProcess.close_output closes them.
    output = None
    if keeps_crash_output(session.config):
        output = (tempfile.TemporaryFile(), tempfile.TemporaryFile())  # noqa: SIM115
    sys.stdout.flush()
    sys.stderr.flush()
    # Frozen objects are left out of every garbage collection: a worker never scans
    # the collected session it inherits (in test suites that make many objects, full
    # collections over it took over a third of the run) and never writes to its pages,
    # which stay shared with the main process instead of being copied.  The main
    # process keeps them frozen until the run ends, for the same saving.
    gc.freeze()
    # Ctrl-C waits until the worker is on the controller's list, where it is stopped with
    # the rest (a KeyboardInterrupt right after fork would leave it running on its own).
    with _sigint_deferred():
        pid = os.fork()
        if pid == 0:  # the child: keep only its own two ends
            close_in_child()
            for other in others:
                other.close_channels()
            command_writer.close()
            result_reader.close()
            run_worker(session, command_reader, result_writer, output, coverage)
        command_reader.close()
        result_writer.close()
        worker = WorkerProcess(pid, command_writer, result_reader, output=output)
        add(worker)
        return worker


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


def _describe_exit(signal_number: int, code: int) -> str:
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        return f"was killed by {name}"
    return f"exited with code {code}"
