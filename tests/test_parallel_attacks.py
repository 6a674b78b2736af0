"""Defects found by attacking pytest --par as a project moving from pytest-xdist would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from parallel_suite import FLAGS

STARTS = [
    pytest.param(["--par-start=fork"], id="fork"),
    pytest.param(["--par-start=spawn"], id="spawn"),
    pytest.param(["--par-mode=thread"], id="thread"),
]

PARAMETRIZED_ONCE = """
import pytest, pytest_memo

@pytest.fixture(scope="session", params=[1, 2])
@pytest_memo.once_per_run
def number(request):
    yield request.param

@pytest.mark.parametrize("i", range(3))
def test_number(number, i, request):
    assert number == request.node.callspec.params["number"]
"""


@pytest.mark.parametrize("start", STARTS)
def test_parametrized_once_per_run_fixture_gives_each_parameter_its_value(
    pytester: pytest.Pytester, start: list[str]
) -> None:
    # Every parameter used to get the value of the one the main process had set up.
    pytester.makepyfile(PARAMETRIZED_ONCE)
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", *start, timeout=120)
    result.assert_outcomes(passed=6)


FAILING_ONCE_TEARDOWN = """
import pytest, pytest_memo

@pytest.fixture(scope="session")
@pytest_memo.once_per_run
def server():
    yield 1
    raise RuntimeError("teardown failed")

@pytest.mark.parametrize("i", range(3))
def test_server(server, i):
    pass

def test_last():
    pass
"""


@pytest.mark.parametrize("start", STARTS)
def test_failing_once_per_run_teardown_is_an_error_of_the_last_test(
    pytester: pytest.Pytester, start: list[str]
) -> None:
    # It used to end the run with a bare traceback: no summary, no counts.
    pytester.makepyfile(FAILING_ONCE_TEARDOWN)
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", *start, timeout=120)
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_last*", "*RuntimeError: teardown failed"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


SHARED_SERVER_AND_SLOW_TESTS = """
import os, time, pytest, pytest_memo

@pytest.fixture(scope="session")
@pytest_memo.once_per_run
def server():
    open("started.txt", "w").close()
    time.sleep(float(os.environ["SETUP_SECONDS"]))
    yield 1
    open("torn_down.txt", "w").close()

@pytest.mark.parametrize("i", range(4))
def test_slow(server, i):
    open("running.txt", "w").close()
    time.sleep(2)
"""


@pytest.mark.parametrize(
    ("mode", "setup_seconds", "signal_when"),
    [
        pytest.param("--par-mode=thread", "0", "running.txt", id="thread-mode-running"),
        pytest.param("--par-mode=process", "30", "started.txt", id="once-per-run-setup"),
    ],
)
def test_sigterm_in_thread_mode_or_once_per_run_setup_ends_the_run_as_ctrl_c(
    pytester: pytest.Pytester, mode: str, setup_seconds: str, signal_when: str
) -> None:
    # It killed the run at once (exit status -15): no summary, and in thread mode the
    # shared server was never stopped.
    pytester.makepyfile(SHARED_SERVER_AND_SLOW_TESTS)
    command = [sys.executable, "-m", "pytest", *FLAGS, "--par=2", mode]
    environment = {**os.environ, "SETUP_SECONDS": setup_seconds}
    with subprocess.Popen(
        command,
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment,
    ) as process:
        try:
            deadline = time.monotonic() + 60
            while not (pytester.path / signal_when).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=60)[0].decode()
        finally:
            process.kill()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert "KeyboardInterrupt" in output
    if setup_seconds == "0":
        assert (pytester.path / "torn_down.txt").exists(), output
