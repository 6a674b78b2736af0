"""pytest --par never hangs and leaves no process behind (issue #15): tests that fork,
time out, signal themselves; a main process stopped by SIGTERM or SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="process groups and fork")


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, dead but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def gone_soon(pid: int, seconds: float = 20.0) -> bool:
    """Whether ``pid`` ends within ``seconds`` (a generous bound, not a timing check)."""
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def pids(path: Path) -> list[int]:
    return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def wait_for(path: Path, count: int = 1, seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while len(pids(path)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids(path)


@pytest.fixture
def no_leaks(pytester: pytest.Pytester) -> Iterator[Path]:
    """Processes the tests under test write to ``children.txt`` must be gone at the end
    (and are killed whatever happens, so a failing check leaks nothing either)."""
    path = pytester.path / "children.txt"
    yield path
    leaked = [pid for pid in pids(path) if alive(pid)]
    for pid in leaked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes left running: {leaked}"


FORKS = """
import multiprocessing, os, subprocess, sys, time, pytest

def note(pid):
    with open("children.txt", "a") as file:
        file.write(f"{pid}\\n")

def sleep_forever():
    time.sleep(300)

@pytest.mark.parametrize("i", range(4))
def test_quick(i):
    pass

def test_fork_then_crash():
    pid = os.fork()
    if pid == 0:
        sleep_forever()
        os._exit(0)
    note(pid)
    os._exit(3)

def test_multiprocessing_then_crash():
    process = multiprocessing.get_context("fork").Process(target=sleep_forever)
    process.start()
    note(process.pid)
    os._exit(4)

def test_daemon_then_crash():
    # A daemon in a session of its own, outside the worker's process group: it is left
    # running (as in a serial run), but must not hang the run either.
    pid = os.fork()
    if pid == 0:
        os.setsid()
        with open("daemon.txt", "w") as file:
            file.write(f"{os.getpid()}\\n")
        sleep_forever()
        os._exit(0)
    while not os.path.exists("daemon.txt"):
        time.sleep(0.01)
    os._exit(5)

def test_fork_then_time_out():
    pid = os.fork()
    if pid == 0:
        sleep_forever()
        os._exit(0)
    note(pid)
    program = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    note(program.pid)
    sleep_forever()
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_crashes_and_timeouts_of_tests_that_fork_do_not_hang_or_leak(
    pytester: pytest.Pytester, no_leaks: Path, start: str
) -> None:
    # Each forked child holds the worker's result pipe: the controller waited for its end.
    pytester.makepyfile(test_forks=FORKS)
    try:
        result = pytester.runpytest_subprocess(
            *FLAGS, "--par=2", f"--par-start={start}", "--par-timeout=3", timeout=90
        )
    finally:
        for pid in pids(pytester.path / "daemon.txt"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    result.assert_outcomes(passed=4, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*test_fork_then_crash crashed: its worker process exited with code 3*",
            "*test_multiprocessing_then_crash crashed: its worker process exited with code 4*",
            "*test_daemon_then_crash crashed: its worker process exited with code 5*",
            "*test_fork_then_time_out timed out after*--par-timeout=3*",
        ]
    )
    # The forked children and the program were in the worker's process group.
    assert len(pids(no_leaks)) == 4
    for pid in pids(no_leaks):
        assert gone_soon(pid), pid


def test_a_timeout_shows_where_the_test_was(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_slow="""
        import threading, time

        def helper_thread_waits():
            time.sleep(300)

        def the_test_waits_here():
            time.sleep(300)

        def test_slow():
            threading.Thread(target=helper_thread_waits, daemon=True).start()
            the_test_waits_here()
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--par-timeout=2", timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_slow timed out after*--par-timeout=2*",
            "*Captured stderr before the worker stopped*",
        ]
    )
    output = result.stdout.str()
    assert "in the_test_waits_here" in output  # faulthandler's dump of every thread
    assert "in helper_thread_waits" in output


def test_the_timeout_mark_is_honoured_and_zero_means_none(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marked="""
        import time, pytest

        @pytest.mark.timeout(1)
        def test_marked():
            time.sleep(300)

        @pytest.mark.timeout(0)
        def test_unlimited_by_its_mark():
            time.sleep(0.3)

        def test_unlimited():
            time.sleep(0.3)
        """
    )
    result = pytester.runpytest_subprocess(
        *FLAGS,
        "-W",
        "ignore::pytest.PytestUnknownMarkWarning",
        "--par=2",
        "--par-timeout=0",
        timeout=60,
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_marked timed out after*@pytest.mark.timeout(1)*"])


SLEEPERS = """
import os, time, pytest

@pytest.mark.parametrize("i", range(3))
def test_quick(i):
    pass

@pytest.mark.parametrize("i", range(4))
def test_sleep(i):
    with open("workers.txt", "a") as file:
        file.write(f"{os.getpid()}\\n")
    time.sleep(300)
"""


def start_pytest(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "pytest", *FLAGS, *args]
    return subprocess.Popen(
        command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_sigterm_to_the_main_process_ends_the_run_as_ctrl_c(
    pytester: pytest.Pytester, start: str
) -> None:
    pytester.makepyfile(test_sleepers=SLEEPERS)
    process = start_pytest(pytester, "--par=2", f"--par-start={start}")
    workers = wait_for(pytester.path / "workers.txt", count=2, seconds=60)
    try:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    assert "3 passed" in output  # the summary counts what ran
    assert "BrokenPipeError" not in output
    for pid in workers:
        assert gone_soon(pid), pid


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_die_with_a_killed_main_process(pytester: pytest.Pytester, start: str) -> None:
    pytester.makepyfile(test_sleepers=SLEEPERS)
    process = start_pytest(pytester, "--par=2", f"--par-start={start}")
    workers = wait_for(pytester.path / "workers.txt", count=2, seconds=60)
    process.kill()
    output, _ = process.communicate(timeout=30)
    try:
        for pid in workers:
            assert gone_soon(pid), pid
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert "BrokenPipeError" not in output


def test_sigint_a_test_sends_itself_acts_as_in_a_serial_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_interrupt="""
        import os, signal, time, pytest

        @pytest.mark.parametrize("i", range(3))
        def test_expects_it(i):
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
        """
    )
    for args in ((), ("--par=2",)):
        result = pytester.runpytest_subprocess(*FLAGS, *args, timeout=60)
        result.assert_outcomes(passed=3)
    pytester.makepyfile(
        test_interrupt="""
        import os, signal, time

        def test_interrupts_the_run():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", timeout=60)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])


def test_a_forked_child_returning_into_pytest_is_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_stray="""
        import os, pytest

        @pytest.mark.parametrize("i", range(3))
        def test_quick(i):
            pass

        def test_forgets_to_exit():
            pid = os.fork()
            if pid:
                os.waitpid(pid, 0)
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", timeout=60)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(
        ["*test_forgets_to_exit: process *, which this test forked*returned into pytest*"]
    )
    result.assert_outcomes(passed=4, errors=1)


CRASHES_ONCE = """
import os

def test_crashes_the_first_time():
    if not os.path.exists("crashed.txt"):
        open("crashed.txt", "w").close()
        os._exit(3)

def test_other():
    pass
"""


def test_a_crashed_test_can_be_rerun_by_a_plugin(pytester: pytest.Pytester) -> None:
    # pytest-xdist's pytest_handlecrashitem, as pytest-rerunfailures implements it.
    pytest.importorskip("xdist")
    pytester.makeconftest(
        """
        def pytest_handlecrashitem(crashitem, report, sched):
            assert sched.config.getoption("par") == "2"
            sched.mark_test_pending(crashitem)
            report.outcome = "rerun"
        """
    )
    pytester.makepyfile(test_crash=CRASHES_ONCE)
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", timeout=60)
    assert result.parseoutcomes() == {"passed": 2, "rerun": 1}


@pytest.mark.parametrize(
    ("args", "warnings"),
    [
        (
            ("--par-timeout=5", "--par-start=spawn", "--par-mode=thread"),
            ["--par-timeout=5.0 has no effect", "--par-start=spawn", "--par-mode=thread"],
        ),
        (("--par=2", "--par-mode=thread", "--par-dist=scope"), ["--par-dist=scope has no effect"]),
    ],
)
def test_options_that_do_nothing_say_so(
    pytester: pytest.Pytester, args: tuple[str, ...], warnings: list[str]
) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess(*FLAGS, *args, timeout=60)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines_random([f"*PytestConfigWarning: {text}*" for text in warnings])


ONCE_PER_RUN = """
import os, secrets, time, pytest, pytest_memo

@pytest.fixture(scope="session")
@pytest_memo.once_per_run
def server(tmp_path_factory):
    with open("setups.txt", "a") as file:
        file.write(f"{os.getpid()}\\n")
    yield {"token": secrets.token_hex(8), "base": str(tmp_path_factory.getbasetemp())}
    with open("teardowns.txt", "a") as file:
        file.write(f"{os.getpid()} after {len(open('used.txt').read().splitlines())} tests\\n")

@pytest.fixture(scope="session")
def ordinary():
    return os.getpid()

@pytest.mark.parametrize("i", range(8))
def test_use(i, server, ordinary):
    with open("used.txt", "a") as file:
        file.write(f"{server['token']} {os.getpid()}\\n")
    time.sleep(0.05)
"""


@pytest.mark.parametrize(
    "args",
    [(), ("--par=2",), ("--par=2", "--par-start=spawn"), ("--par=2", "--par-mode=thread")],
    ids=["serial", "fork", "spawn", "thread"],
)
def test_a_once_per_run_fixture_is_set_up_once_for_all_workers(
    pytester: pytest.Pytester, args: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_once=ONCE_PER_RUN)
    result = pytester.runpytest_subprocess(*FLAGS, *args, timeout=60)
    result.assert_outcomes(passed=8)
    setups = (pytester.path / "setups.txt").read_text().split()
    assert len(setups) == 1, setups
    used = [line.split() for line in (pytester.path / "used.txt").read_text().splitlines()]
    tokens = [token for token, _ in used]
    assert len(tokens) == 8
    if args and "--par-mode=thread" not in args:
        # Set up in the main process, where no test ran.
        assert setups[0] not in {pid for _, pid in used}
    assert len(set(tokens)) == 1  # one value, the same in every worker
    teardowns = (pytester.path / "teardowns.txt").read_text().splitlines()
    assert teardowns == [f"{setups[0]} after 8 tests"]
