"""Thread mode end to end: shared fixtures, logs per test, which tests run alone and why."""

from __future__ import annotations

import re

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
THREADS = (*FLAGS, "--par=2", "--par-mode=thread")


def test_an_unparametrized_session_fixture_beside_a_parametrized_one_is_made_once(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest

        def setup(what):
            with open("setups.txt", "a") as log:
                log.write(what + "\\n")

        @pytest.fixture(scope="session")
        def shared():
            setup("shared")

        @pytest.fixture(scope="session", params=[1, 2, 3])
        def number(request):
            setup(f"number {request.param}")
            return request.param

        @pytest.fixture(scope="session")
        def doubled(number):  # depends on the parameter: one per parameter
            setup(f"doubled {number}")
            return 2 * number
        """
    )
    pytester.makepyfile(
        """
        def test_numbers(shared, number, doubled):
            assert doubled == 2 * number
        """
    )
    result = pytester.runpytest_subprocess(*THREADS)
    result.assert_outcomes(passed=3)
    setups = sorted((pytester.path / "setups.txt").read_text().splitlines())
    assert setups == [
        "doubled 1",
        "doubled 2",
        "doubled 3",
        "number 1",
        "number 2",
        "number 3",
        "shared",
    ]


def test_a_session_fixture_first_asked_for_by_two_running_tests_is_made_once(
    pytester: pytest.Pytester,
) -> None:
    # Before, two test bodies asking for it at once (request.getfixturevalue) both ran the
    # fixture, and one failed in pytest's "assert not self._finalizers".
    pytester.makeconftest(
        """
        import threading, time, pytest

        both_running = threading.Barrier(2, timeout=30)

        @pytest.fixture(scope="session")
        def shared():
            with open("setups.txt", "a") as log:
                log.write("shared\\n")
            time.sleep(0.2)  # the other test asks for it meanwhile
            yield "value"
        """
    )
    pytester.makepyfile(
        """
        import pytest
        from conftest import both_running

        @pytest.mark.parametrize("i", range(2))
        def test_asks_in_its_body(request, i):
            both_running.wait()
            assert request.getfixturevalue("shared") == "value"
        """
    )
    result = pytester.runpytest_subprocess(*THREADS)
    result.assert_outcomes(passed=2)
    assert (pytester.path / "setups.txt").read_text().splitlines() == ["shared"]


def test_captured_logs_belong_to_their_test(pytester: pytest.Pytester) -> None:
    # The first two tests wait for each other: they log, and fail, while both run.
    pytester.makepyfile(
        """
        import logging, threading

        both_running = threading.Barrier(2, timeout=30)
        logger = logging.getLogger("app")

        def test_first():
            logger.warning("first before")
            both_running.wait()
            logger.info("first info")
            both_running.wait()
            assert False

        def test_second():
            logger.warning("second before")
            both_running.wait()
            logger.info("second info")
            both_running.wait()
            assert False
        """
    )
    result = pytester.runpytest_subprocess(*THREADS, "--log-level=INFO")
    result.assert_outcomes(failed=2)
    for mine, theirs in (("first", "second"), ("second", "first")):
        text = failure_of(result, f"test_{mine}")
        assert f"{mine} before" in text and f"{mine} info" in text
        assert f"{theirs} before" not in text and f"{theirs} info" not in text


def failure_of(result: pytest.RunResult, test: str) -> str:
    """The text of ``test``'s failure in the run's output (reports come in any order)."""
    text = result.stdout.str().split("= FAILURES =")[1].split("= short test summary")[0]
    for section in re.split(r"\n_{3,} ", text):
        if section.startswith(f"{test} _"):
            return section
    raise AssertionError(f"no failure of {test} in:\n{text}")


def test_the_summary_names_the_autouse_fixture_that_made_tests_run_alone(
    pytester: pytest.Pytester,
) -> None:
    # As pytest-django's autouse fixture that asks for monkeypatch does for every test.
    pytester.makepyfile(
        plugin_with_autouse="""
        import pytest

        @pytest.fixture(autouse=True)
        def patched_everywhere(monkeypatch):
            pass
        """
    )
    pytester.makepyfile(
        test_many="""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_many(i):
            pass
        """
    )
    result = pytester.runpytest_subprocess(*THREADS, "-p", "plugin_with_autouse")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "par: 3 of 3 tests ran alone in thread mode, as they change what all threads "
            "share (process mode runs them in parallel): using monkeypatch through the "
            "autouse fixture patched_everywhere of plugin_with_autouse: 3"
        ]
    )


def test_faulthandler_timeout_is_said_not_to_apply(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_quick():\n    pass\n")
    result = pytester.runpytest_subprocess(*THREADS, "-o", "faulthandler_timeout=60")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*faulthandler_timeout does not apply in --par-mode=thread*"])
