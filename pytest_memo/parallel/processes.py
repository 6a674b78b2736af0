"""The controller's side of a worker process: its channels, how to fork one, stop one,
and say how it ended.

Each worker leads a process group of its own, so that stopping it (a crash, a timeout,
Ctrl-C) stops the programs its tests started too.  Its end is seen from the process
itself (a pidfd on Linux, ``waitid`` elsewhere), not from the end of its pipe: a process
a test forked may hold the pipe open long after the worker died.  A forked worker dies
with the main process, even one killed with SIGKILL (``die_with_parent``).
"""

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

__all__ = ["DUMP_SIGNAL", "WorkerProcess", "die_with_parent", "fork_worker"]

# Sent to a worker that ran out of time: it writes where each of its threads is (the
# worker registers faulthandler for it, chained to the default action) and then dies.
DUMP_SIGNAL = getattr(signal, "SIGUSR2", signal.SIGTERM)
# How long a worker sent DUMP_SIGNAL has before it is killed outright (a test may have
# installed its own handler for the signal, or blocked it).
DUMP_GRACE_SECONDS = 5.0


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
        self.timeout_signalled = 0.0  # when DUMP_SIGNAL was sent (0: not yet)
        self.status: str | None = None  # how it ended, once it has
        # Readable once the process has ended (Linux >= 5.3), or None: then the
        # controller polls ``has_exited``.
        self.exit_watch = _pidfd(pid)

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
        """Kill the worker and every process of its group: what its tests started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # not a leader yet
            os.kill(self.pid, signal.SIGKILL)

    def stop_for_timeout(self) -> None:
        """Have it write its threads' tracebacks, then die (``kill`` if it does not)."""
        self.timed_out = True
        self.timeout_signalled = time.monotonic()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, DUMP_SIGNAL)

    def has_exited(self) -> bool:
        """Whether the process has ended, without reaping it (its group stays killable)."""
        if self.status is not None:
            return True
        if hasattr(os, "waitid"):
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                self.status = "ended"
                return True
            return info is not None
        if self.process is not None:
            return self.process.poll() is not None
        return False  # the end of its pipe tells

    def reap(self) -> str:
        """Wait for the process to end; say how it ended."""
        if self.status is not None:
            return self.status
        if self.process is not None:
            code = self.process.wait()
            self.status = _describe_exit(signal_number=max(-code, 0), code=max(code, 0))
            return self.status
        try:
            status = os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            self.status = "ended"
            return self.status
        if os.WIFSIGNALED(status):
            self.status = _describe_exit(signal_number=os.WTERMSIG(status), code=0)
        else:
            self.status = _describe_exit(signal_number=0, code=os.WEXITSTATUS(status))
        return self.status

    def close_channels(self) -> None:
        self.commands.close()
        self.results.close()
        if self.exit_watch is not None:
            os.close(self.exit_watch)
            self.exit_watch = None


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
    parent = os.getpid()
    with _sigint_deferred():
        pid = os.fork()
        if pid == 0:  # the child: keep only its own two ends
            try:
                _become_group_leader(0)
                die_with_parent(parent)
                close_in_child()
                for other in others:
                    other.close_channels()
                command_writer.close()
                result_reader.close()
            except BaseException:
                os._exit(70)
            run_worker(session, command_reader, result_writer, output, coverage)
        # Here too, so that the group exists before anything may kill it.
        _become_group_leader(pid)
        command_reader.close()
        result_writer.close()
        worker = WorkerProcess(pid, command_writer, result_reader, output=output)
        add(worker)
        return worker


def _become_group_leader(pid: int) -> None:
    """Make process ``pid`` (0: this one) lead a new process group."""
    with contextlib.suppress(OSError):  # done already by the other side, or no job control
        os.setpgid(pid, 0)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have this process killed when ``parent`` (which started it) dies, even of SIGKILL.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere the worker finds out when the
    pipe from its parent ends.  If the parent died already, exit now."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(70)


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when process ``pid`` ends, if this system has one."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        descriptor: int = opener(pid)
    except OSError:
        return None
    return descriptor


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
