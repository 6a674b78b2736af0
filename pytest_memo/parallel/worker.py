"""The worker side: a forked copy of the collected session that runs the items it is sent.

A worker runs pytest's own ``pytest_runtest_protocol`` for each item and sends back, per
item, the serialized reports and warnings that its hooks produced; the controller
replays them through the hooks of the main process.  Nothing is printed here.  Like a
pytest-xdist worker, it has ``config.workerinput``, and ends its session with
``pytest_sessionfinish``, after which it sends ``config.workeroutput`` back, and
``pytest_unconfigure`` (see ``pytest_memo.parallel.nodes``).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import traceback
import warnings
from collections import deque
from collections.abc import Generator
from typing import IO, TYPE_CHECKING, Any

import pytest

from pytest_memo.parallel.nodes import become_worker
from pytest_memo.parallel.protocol import (
    Bye,
    Configure,
    End,
    Event,
    Exited,
    Interrupted,
    ItemDone,
    LogFinish,
    LogReport,
    LogStart,
    Run,
    Stop,
    Strayed,
    SuiteProperty,
)
from pytest_memo.parallel.replay import warning_event
from pytest_memo.parallel.report_files import main_only_writers
from pytest_memo.pytest_compat import (
    FDCapture,
    TerminalWriter,
    global_capturing,
    set_writer_stream,
    setup_state,
    terminal_writer,
    unconfigure,
    xml_key,
)

if TYPE_CHECKING:
    from pytest_memo.parallel.channel import MessageChannel
    from pytest_memo.parallel.worker_coverage import WorkerCoverage

# A worker's stdout and stderr capture files, also open in the controller, which reads
# them when a test kills its worker.
CaptureFiles = tuple[IO[bytes], IO[bytes]]


def keeps_crash_output(config: pytest.Config) -> bool:
    """Whether workers capture into such files: with fd capture, pytest's default."""
    return bool(config.getoption("capture", "fd") == "fd")


# Plugins whose work belongs to the main process only: they print or write files.  (A
# forked worker inherits them configured as for the main process, so that plugins which
# leave themselves out of pytest-xdist workers, junitxml's writer among them, are there.)
MAIN_ONLY_PLUGINS = (
    "terminalprogress-plugin",
    "junitxml",
    "resultlog",
    "pastebin",
)


RECORDER = "pytest_memo.parallel.recorder"


class _EventRecorder:
    """Collects, for the item being run, what serial pytest would send to reporters.

    Registered once in the main process before it forks (``install_recorder``), where it
    records nothing: registering costs a worker over a millisecond (pluggy inspects each
    hook's signature), and workers start on a busy machine.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.events: list[Event] = []
        self.recording = False  # set in workers
        self.failed = False  # a test failed: the exit status of the worker's session
        self.with_subtests: set[str] = set()  # tests that reported subtests

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if self.recording:
            self.events.append(LogStart(nodeid, location))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.recording:
            hook = self.config.hook
            # Outcomes are decided here, where plugins counted what decides them: pytest's
            # subtests fail a test whose subtests failed, in this hook, called by the
            # terminal reporter in a serial run.  Only for subtest reports and the test
            # that had them: for every report it cost a run of 2000 quick tests 15%.
            if type(report) is not pytest.TestReport:
                self.with_subtests.add(report.nodeid)
            if report.nodeid in self.with_subtests:
                hook.pytest_report_teststatus(report=report, config=self.config)
            self.failed = self.failed or report.failed
            data = hook.pytest_report_to_serializable(config=self.config, report=report)
            # A representation with no one-line crash message (a doctest's, some plugins')
            # travels as text; the flag keeps the short summary from showing it as one.
            became_text = isinstance(data.get("longrepr"), str) and not isinstance(
                report.longrepr, str
            )
            self.events.append(LogReport(data, became_text))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if self.recording:
            self.events.append(LogFinish(nodeid, location))

    @pytest.hookimpl(tryfirst=True)
    def pytest_warning_recorded(
        self, warning_message: warnings.WarningMessage, when: str, nodeid: str, location: Any
    ) -> None:
        # Not the historic calls made on registering, before the fork: configuration-time
        # warnings, which the main process reports itself.
        if not self.recording:
            return
        record = warning_message
        event = warning_event(
            record.message, record.category, record.filename, record.lineno, when, nodeid, location
        )
        self.events.append(event)

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def install_recorder(config: pytest.Config) -> _EventRecorder:
    """The event recorder, registered unless it is already."""
    recorder = config.pluginmanager.get_plugin(RECORDER)
    if not isinstance(recorder, _EventRecorder):
        recorder = _EventRecorder(config)
        config.pluginmanager.register(recorder, RECORDER)
    return recorder


def remove_recorder(config: pytest.Config) -> None:
    recorder = config.pluginmanager.get_plugin(RECORDER)
    if recorder is not None:
        config.pluginmanager.unregister(recorder)


def run_worker(
    session: pytest.Session,
    commands: MessageChannel,
    results: MessageChannel,
    output: CaptureFiles | None = None,
    coverage: WorkerCoverage | None = None,
    forked: bool = True,
) -> None:
    """Entry point in the forked child (or spawned worker, ``forked`` False); never returns.

    ``output``: files, open in the controller too, to capture stdout and stderr into.
    ``coverage``: coverage.py's measurement, to record this worker's part of.
    """
    code = 0
    parent = os.getppid()
    try:
        _take_signals_as_a_serial_run_does()
        config = session.config
        for name in MAIN_ONLY_PLUGINS:
            plugin = config.pluginmanager.get_plugin(name)
            if plugin is not None:
                config.pluginmanager.unregister(plugin)
        _leave_report_files_to_the_main_process(config)
        # The terminal reporter stays, silent: plugins attach what they show in the main
        # process's summary to reports only where they find one (Hypothesis' statistics),
        # as in pytest-xdist's workers.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            _silence(config, reporter)
            set_writer_stream(terminal_writer(reporter), _CurrentStdout())
        # Plugins that write to the terminal from inside a test (pytest-timeout's stack
        # dump) write to the test's captured output, which its report carries back.
        writer = TerminalWriter(_CurrentStdout())  # type: ignore[arg-type]
        config.get_terminal_writer = lambda: writer  # type: ignore[method-assign]
        _own_capture_files(config, output)
        _dump_tracebacks_on_timeout(output)
        recorder = install_recorder(config)  # a spawned worker registers it here
        recorder.recording = True
        _leave_reporting_to_the_main_process(config, recorder)
        _record_suite_properties(config, recorder)
        match commands.recv():
            case Configure(workerinput):
                become_worker(config, workerinput)
                _count_reruns_in_the_main_process(config, workerinput)
        if coverage is not None:
            coverage.record_this_worker()
        status = _loop(session, commands, results, recorder, parent)
        if coverage is not None:
            coverage.save_this_worker()
        _finish_session(session, results, status, forked)
    except BaseException as error:  # say what broke; leave without the parent's cleanup
        code = 70
        if not (isinstance(error, (EOFError, OSError)) and os.getppid() != parent):
            traceback.print_exc()  # (a worker whose main process died leaves quietly)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# Hooks whose calls the main process replays from what the recorder sends: here, only the
# recorder may see them, or every plugin reporting tests (a JSON log, a result uploader)
# would see each report twice, once here and once there.
REPLAYED_HOOKS = (
    "pytest_runtest_logstart",
    "pytest_runtest_logreport",
    "pytest_runtest_logfinish",
    "pytest_warning_recorded",
)


def _leave_reporting_to_the_main_process(config: pytest.Config, recorder: object) -> None:
    for name in REPLAYED_HOOKS:
        for implementation in getattr(config.hook, name).get_hookimpls():
            if implementation.plugin is not recorder:
                _disable(implementation)


def _silence(config: pytest.Config, plugin: object) -> None:
    """Leave ``plugin`` registered, its hook implementations doing nothing."""
    for caller in config.pluginmanager.get_hookcallers(plugin) or ():
        for implementation in caller.get_hookimpls():
            if implementation.plugin is plugin:
                _disable(implementation)


def _disable(implementation: Any) -> None:
    if implementation.wrapper:
        implementation.function = _pass_through
    elif implementation.hookwrapper:
        implementation.function = _old_style_pass_through
    else:
        implementation.function = _ignore


def _leave_report_files_to_the_main_process(config: pytest.Config) -> None:
    for writer in main_only_writers(config):
        config.pluginmanager.unregister(writer)
    # pytest-reportlog closes its file in pytest_unconfigure: a forked worker's copy of it
    # shares the main process's file offset, and a compressed one (.gz) would write its
    # trailer into the middle of the log.
    _skip_hook(config, "pytest_unconfigure", config.pluginmanager.get_plugin("pytest_reportlog"))


def _record_suite_properties(config: pytest.Config, recorder: _EventRecorder) -> None:
    """``record_testsuite_property`` writes to the junitxml report, which only the main
    process writes: send the properties there with the test's events."""
    xml = config.stash.get(xml_key, None)
    if xml is not None:

        def add_global_property(name: str, value: object) -> None:
            recorder.events.append(SuiteProperty(name, value))

        xml.add_global_property = add_global_property  # type: ignore[method-assign]


def _finish_session(
    session: pytest.Session, results: MessageChannel, status: int, forked: bool
) -> None:
    """End the session as a pytest-xdist worker does: ``pytest_sessionfinish``, then
    ``config.workeroutput`` to the main process, then ``pytest_unconfigure``."""
    config = session.config
    workeroutput: dict[str, Any] = config.workeroutput  # type: ignore[attr-defined]
    workeroutput["exitstatus"] = int(status)
    workeroutput["shouldfail"] = session.shouldfail
    workeroutput["shouldstop"] = session.shouldstop
    if forked:
        # A forked worker shares the main process's base temporary directory (made before
        # the fork), which pytest's clean-up at the end of a session would remove.
        _skip_hook(config, "pytest_sessionfinish", config.pluginmanager.get_plugin("tmpdir"))
    # What plugins print at the end of a worker's session (pytest-benchmark's notice that
    # it is disabled) is the main process's to say, once: captured here, and dropped
    # before pytest's clean-up would write it out (clean-ups run last added, first).
    capture = global_capturing(config.pluginmanager.get_plugin("capturemanager"))
    if capture is not None:
        capture.resume_capturing()
        config.add_cleanup(capture.readouterr)
    error = None
    try:
        config.hook.pytest_sessionfinish(session=session, exitstatus=status)
    except Exception:  # a plugin's: the main process says so
        error = traceback.format_exc()
    results.send(Bye(workeroutput, error))
    unconfigure(config)


def _skip_hook(config: pytest.Config, name: str, plugin: object) -> None:
    for implementation in getattr(config.hook, name).get_hookimpls():
        if plugin is not None and implementation.plugin is plugin:
            implementation.function = _ignore


def _ignore(*arguments: object) -> None:
    return None


def _pass_through(*arguments: object) -> Generator[None, object, object]:
    return (yield)


def _old_style_pass_through(*arguments: object) -> Generator[None, object, None]:
    yield


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is when written to: during a test, its capture.
    The terminal itself belongs to the main process."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def isatty(self) -> bool:
        return False


# -- signals and stray processes (keep this block: the runner's hang handling) ------------


def _take_signals_as_a_serial_run_does() -> None:
    """SIGINT raises KeyboardInterrupt, as in a serial run: a worker leads a process group
    of its own, so Ctrl-C at the terminal reaches only the main process, which stops the
    workers; a SIGINT a worker gets comes from its tests.  SIGTERM kills, as by default
    (the main process's handler, which ends the run, is inherited through fork)."""
    if hasattr(signal, "pthread_sigmask"):  # held back by the controller around fork
        # A Ctrl-C that reached the worker before it left the terminal's process group
        # is the main process's to handle: drop it, then take SIGINT as pytest does.
        signal.signal(signal.SIGINT, _ignore_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Out of the terminal's foreground group, reading the terminal would stop the worker.
    if os.isatty(0):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)


def _ignore_signal(signum: int, frame: object) -> None:
    """A SIGINT pending from before the worker had its own process group."""


def _dump_tracebacks_on_timeout(output: CaptureFiles | None) -> None:
    """On the controller's timeout signal, write every thread's traceback where the test's
    stderr goes (its capture file, which the timeout report shows), then die."""
    from pytest_memo.parallel.processes import DUMP_SIGNAL

    stream = output[1] if output is not None else sys.__stderr__
    if stream is None or DUMP_SIGNAL == signal.SIGTERM:
        return
    faulthandler.register(DUMP_SIGNAL, file=stream, all_threads=True, chain=True)


def _count_reruns_in_the_main_process(config: pytest.Config, workerinput: dict[str, Any]) -> None:
    """pytest-rerunfailures decides in the main process whether to rerun a test whose
    worker crashed, from the failures that workers tell its server there: an xdist worker
    connects to it in ``pytest_configure``, at the address its ``pytest_configure_node``
    put in ``workerinput``.  This process was configured before it was a worker (forked
    from the main process, or spawned), so it holds a server (the main process's, or one
    of its own that nobody asks): connect to the main process's instead."""
    server: Any = getattr(config, "failures_db", None)
    if type(server).__name__ != "ServerStatusDB" or "sock_port" not in workerinput:
        return
    address = [workerinput["sock_port"]]
    if "statusdb_token" in workerinput:  # (its recent versions authenticate workers)
        address.append(workerinput["statusdb_token"])
    try:
        import importlib

        client = importlib.import_module("pytest_rerunfailures").ClientStatusDB
        setattr(config, "failures_db", client(*address))  # noqa: B010
    except Exception:  # another version: crashed tests are not rerun, as before
        return


def _stray(index: int, results: MessageChannel) -> None:
    """In a process that a test forked and that returned into pytest instead of exiting:
    tell the controller, which reports it, and leave before it runs anything more."""
    try:
        results.send(Strayed(index, os.getpid()))
    finally:
        os._exit(70)


def _own_capture_files(config: pytest.Config, output: CaptureFiles | None) -> None:
    """With fd capture (the default), make this worker capture into ``output``: files of
    its own, which the controller reads if a test kills the worker.  The capture files a
    forked worker inherits are shared with the main process and every other worker, and
    would mix their output.

    The capture objects themselves are kept (pytest's write straight through, without
    buffers): restarting capture cost each worker a millisecond while the others start.
    Capture to memory (``--capture=sys``) is this process's own already.
    """
    capture = config.pluginmanager.get_plugin("capturemanager")
    captures = global_capturing(capture)
    if output is None or captures is None:
        return
    for name, own in zip(("out", "err"), output, strict=True):
        fd_capture = getattr(captures, name, None)
        if isinstance(fd_capture, FDCapture):
            # The capture's file descriptor now refers to the worker's own file.
            os.dup2(own.fileno(), fd_capture.tmpfile.fileno())


def _loop(
    session: pytest.Session,
    commands: MessageChannel,
    results: MessageChannel,
    recorder: _EventRecorder,
    parent: int,
) -> int:
    """Run the items the controller sends; the exit status of this worker's session."""
    status: int = pytest.ExitCode.OK
    items = session.items
    me = os.getpid()
    queue: deque[int] = deque()
    ended = False
    while True:
        # pytest needs the next item to know which fixtures to keep: run an item only once
        # the one after it is known, or once no more work will come.
        while not ended and (len(queue) < 2 or commands.poll()):
            match commands.recv():
                case Run(indices):
                    queue.extend(indices)
                case End():
                    ended = True
                case Stop():
                    queue.clear()
                    ended = True
        if not queue or os.getppid() != parent:  # (the main process is gone)
            break
        index = queue.popleft()
        nextitem = items[queue[0]] if queue else None
        try:
            items[index].config.hook.pytest_runtest_protocol(item=items[index], nextitem=nextitem)
        except pytest.exit.Exception as stop:
            if os.getpid() != me:
                _stray(index, results)
            results.send(Exited(index, stop.msg, stop.returncode))
            status = pytest.ExitCode.INTERRUPTED if stop.returncode is None else stop.returncode
            break
        except KeyboardInterrupt:
            if os.getpid() != me:
                _stray(index, results)
            results.send(Interrupted(index))
            status = pytest.ExitCode.INTERRUPTED
            break
        if os.getpid() != me:
            _stray(index, results)
        results.send(ItemDone(index, recorder.take()))
    # After a stop, fixtures of wider scopes may still be set up: finalize them.
    setup_state(session).teardown_exact(None)
    if status == pytest.ExitCode.OK and recorder.failed:
        status = pytest.ExitCode.TESTS_FAILED
    return status
