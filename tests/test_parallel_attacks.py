"""Defects found by attacking pytest --par as a project moving from pytest-xdist would."""

from __future__ import annotations

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
