"""pytest --par is robust to crashes and stops as a serial run does: a worker that dies or
times out fails its test alone; Ctrl-C, pytest.exit and -x/--maxfail stop the run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from parallel_suite import FLAGS, start_pytest

CRASHES = """
import os, signal, time

def test_before():
    pass

def test_exit():
    print("printed before os._exit", flush=True)
    os._exit(3)

def test_segfault():
    os.write(2, b"written to stderr before SIGSEGV")
    os.kill(os.getpid(), signal.SIGSEGV)

def test_slow():
    print("printed before the timeout", flush=True)
    time.sleep(30)

def test_after_1():
    pass

def test_after_2():
    pass
"""


def test_crashes_and_timeouts_fail_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_crash=CRASHES)
    started = time.monotonic()
    result = pytester.runpytest_subprocess(
        *FLAGS, "-p", "no:faulthandler", "--par=2", "--par-timeout=2", timeout=60
    )
    assert time.monotonic() - started < 25
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*test_exit crashed: its worker process exited with code 3*",
            "*test_segfault crashed: its worker process was killed by SIGSEGV*",
            "*test_slow timed out after*--par-timeout=2*",
        ]
    )
    # What each test printed before its worker died is kept with its failure.
    output = result.stdout.str()
    for title, text in [
        ("Captured stdout before the worker stopped", "printed before os._exit"),
        ("Captured stderr before the worker stopped", "written to stderr before SIGSEGV"),
        ("Captured stdout before the worker stopped", "printed before the timeout"),
    ]:
        assert re.search(f"{title} -+\n{text}", output), (title, text)


def deliverable_sigint() -> None:
    """Run in the child before exec: Ctrl-C reaches it as it would from a terminal,
    whatever this test process inherited (bash starts background jobs with SIGINT
    ignored, and an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_stops_every_worker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sleepy="""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_quick(i):
            pass

        @pytest.mark.parametrize("i", range(20))
        def test_sleep(i):
            with open("pids.txt", "a") as pids:
                pids.write(f"{os.getpid()}\\n")
            time.sleep(5)
        """
    )
    process = start_pytest(pytester, "--par=2", text=True, preexec_fn=deliverable_sigint)
    deadline = time.monotonic() + 30
    while not (pytester.path / "pids.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"still running 20 s after Ctrl-C:\n{output}")
    assert "KeyboardInterrupt" in output
    assert re.search(r"\b6 passed\b", output), output  # the summary counts what ran
    workers = {int(pid) for pid in (pytester.path / "pids.txt").read_text().split()}
    assert len(workers) == 2
    time.sleep(0.5)
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_programs_started_by_tests_get_ctrl_c_as_in_a_serial_run(pytester: pytest.Pytester) -> None:
    # Workers leave Ctrl-C to the controller; a program a test starts must still stop on
    # it, as in a serial run (an ignored SIGINT would be inherited across exec).
    pytester.makepyfile(
        test_child="""
        import subprocess, sys, pytest

        CODE = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"

        @pytest.mark.parametrize("i", range(2))
        def test_child(i):
            run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
            assert run.stdout.strip() == "True"
        """
    )
    for args in ((), ("--par=2",)):
        process = subprocess.run(
            [sys.executable, "-m", "pytest", *FLAGS, *args],
            cwd=pytester.path,
            capture_output=True,
            text=True,
            preexec_fn=deliverable_sigint,
        )
        assert "2 passed" in process.stdout, (args, process.stdout)


@pytest.mark.parametrize("mode", ["process", "thread"])
@pytest.mark.parametrize(
    ("stop", "code", "line"),
    [
        ('pytest.exit("bye now", returncode=5)', 5, "*Exit: bye now*"),
        ("raise KeyboardInterrupt", 2, "*!!! KeyboardInterrupt !!!*"),
    ],
)
def test_a_test_that_stops_the_run_stops_it_as_in_a_serial_run(
    pytester: pytest.Pytester, mode: str, stop: str, code: int, line: str
) -> None:
    pytester.makepyfile(
        test_stops=f"""
        import time, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_before(i):
            time.sleep(0.1)

        def test_stop():
            {stop}

        @pytest.mark.parametrize("i", range(4))
        def test_after(i):
            time.sleep(0.1)
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", f"--par-mode={mode}")
    assert result.ret == code
    result.stdout.fnmatch_lines([line])
    output = result.stdout.str() + result.stderr.str()
    assert "crashed" not in output and "Traceback" not in output
    # Like serial pytest: the stopping test is not reported, nothing failed.
    assert set(result.parseoutcomes()) <= {"passed", "warnings"}


@pytest.mark.parametrize(("option", "failures"), [("-x", 1), ("--maxfail=2", 2)])
def test_maxfail_stops_dispatching(pytester: pytest.Pytester, option: str, failures: int) -> None:
    pytester.makepyfile(
        test_many="""
        import time, pytest

        @pytest.mark.parametrize("i", range(60))
        def test_each(i):
            time.sleep(0.02)
            assert i % 10 != 3
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", option)
    assert result.ret == 1
    # A test already running on another worker may fail too before the stop reaches it.
    result.stdout.fnmatch_lines(["*stopping after * failures*"])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= failures
    assert outcomes["failed"] + outcomes.get("passed", 0) < 60  # not everything ran
