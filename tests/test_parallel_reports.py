"""pytest --par reports what a serial run reports: outcomes, captured output, warnings,
junitxml, progress, --lf and --durations, and what plugins see (replay, output)."""

from __future__ import annotations

import os
import re
from typing import Any
from xml.etree import ElementTree

import pytest
from parallel_suite import FLAGS, lines, start_pytest

MIXED = """
import os, threading, time, warnings, pytest

def log(test):
    with open("ran.txt", "a") as ran:
        ran.write(f"{test} {os.getpid()} {threading.get_ident()}\\n")

@pytest.fixture(scope="module")
def shared():
    return {"value": 1}

@pytest.fixture
def broken():
    raise RuntimeError("fixture failed")

@pytest.mark.parametrize("i", range(8))
def test_param(i, shared):
    log(f"param{i}")
    time.sleep(0.05)
    assert shared["value"] == 1

def test_fail():
    log("fail")
    print("output of the failing test")
    assert 1 == 2

def test_error(broken):
    pass

@pytest.mark.skip(reason="skipped")
def test_skip():
    pass

@pytest.mark.xfail(reason="expected")
def test_xfail():
    log("xfail")
    assert False

@pytest.mark.xfail(reason="passes anyway")
def test_xpass():
    log("xpass")

def test_warns():
    log("warns")
    warnings.warn("careful now", UserWarning)

@pytest.fixture(scope="class")
def value():
    return 2

class TestGroup:
    def test_a(self, value):
        log("a")
        assert value == 2

    def test_b(self, value):
        log("b")
        assert value == 2
"""


@pytest.fixture
def mixed(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_mixed=MIXED)
    return pytester


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_outcomes_are_those_of_a_serial_run(mixed: pytest.Pytester, mode: str) -> None:
    serial = mixed.runpytest_subprocess(*FLAGS)
    serial_ran = sorted(row[0] for row in lines(mixed.path / "ran.txt"))
    (mixed.path / "ran.txt").unlink()
    parallel = mixed.runpytest_subprocess(*FLAGS, "--par=3", f"--par-mode={mode}", timeout=120)
    expected, outcomes = serial.parseoutcomes(), parallel.parseoutcomes()
    assert outcomes == expected
    rows = lines(mixed.path / "ran.txt")
    assert sorted(row[0] for row in rows) == serial_ran  # each test ran exactly once
    column = 1 if mode == "process" else 2
    assert len({row[column] for row in rows}) > 1  # really spread over workers
    if mode == "process":
        assert str(os.getpid()) not in {row[1] for row in rows}
    parallel.stdout.fnmatch_lines(["*Captured stdout call*", "output of the failing test"])


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_verbose_output_and_warnings_are_replayed(mixed: pytest.Pytester, mode: str) -> None:
    result = mixed.runpytest_subprocess(*FLAGS, "--par=2", f"--par-mode={mode}", "-v", "-rA")
    result.stdout.fnmatch_lines_random(
        [
            "*test_mixed.py::test_param?0? PASSED*",
            "*test_mixed.py::test_fail FAILED*",
            "*test_mixed.py::TestGroup::test_b PASSED*",
            "*UserWarning: careful now*",
            "PASSED test_mixed.py::test_param?7?",
        ]
    )
    result.stdout.fnmatch_lines(["*warnings summary*", "test_mixed.py::test_warns", "*careful now"])


WARNINGS = """
import time, warnings, pytest

@pytest.mark.parametrize("i", range(4))
def test_warns_its_own(i):
    time.sleep(0.1)  # the cases overlap in thread mode
    warnings.warn(f"from case {i}", UserWarning)

def test_deprecated():
    warnings.warn("old api", DeprecationWarning)

@pytest.mark.filterwarnings("ignore:noisy")
def test_silenced_by_its_mark():
    warnings.warn("noisy thing", UserWarning)

def test_silenced_by_the_ini_file():
    warnings.warn("ini-silenced", RuntimeWarning)
"""


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_each_warning_is_reported_with_its_test(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_w=WARNINGS)
    pytester.makeini("[pytest]\nfilterwarnings =\n    ignore::RuntimeWarning\n")
    serial = pytester.runpytest_subprocess(*FLAGS)
    parallel = pytester.runpytest_subprocess(*FLAGS, "--par=4", f"--par-mode={mode}")
    assert parallel.parseoutcomes() == serial.parseoutcomes() == {"passed": 7, "warnings": 5}
    for case in range(4):
        parallel.stdout.fnmatch_lines(
            [f"test_w.py::test_warns_its_own[[]{case}[]]", f"*UserWarning: from case {case}"]
        )
    parallel.stdout.fnmatch_lines(["test_w.py::test_deprecated", "*DeprecationWarning: old api"])


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_junitxml_lists_what_a_serial_run_lists(mixed: pytest.Pytester, mode: str) -> None:
    mixed.makepyfile(
        test_properties="""
        def test_properties(record_property, record_testsuite_property):
            record_property("case", "x")
            record_testsuite_property("build", "42")
        """
    )

    def cases(*args: str) -> tuple[Any, ...]:
        mixed.runpytest_subprocess(*FLAGS, "--junitxml=out.xml", *args)
        suite = ElementTree.parse(mixed.path / "out.xml").getroot()[0]
        names = sorted(case.get("name", "") for case in suite.iter("testcase"))
        counts = {key: suite.get(key, "") for key in ("tests", "failures", "errors", "skipped")}
        properties = sorted(
            (where.tag, item.get("name"), item.get("value"))
            for where in [suite, *suite.iter("testcase")]
            for item in where.findall("properties/property")
        )
        return names, counts, properties

    serial = cases()
    assert ("testsuite", "build", "42") in serial[2]
    assert cases("--par=2", f"--par-mode={mode}") == serial


DOCTESTS = '''
import time

def slow(value):  # so that the examples of the tests overlap
    time.sleep(0.2)
    return value

def add(a, b):
    """
    >>> add(1, 1)
    3
    """
    return slow(a + b)

def double(a):
    """
    >>> double(2)
    4
    >>> double("x")
    'x'
    >>> double(3)
    6
    """
    return slow(a * 2)

def triple(a):
    """
    >>> triple(1)
    3
    """
    return slow(a * 3)
'''


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_doctest_failures_read_as_in_a_serial_run(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(arithmetic=DOCTESTS)

    def failures(*args: str) -> tuple[list[str], pytest.RunResult]:
        result = pytester.runpytest_subprocess(*FLAGS, "--doctest-modules", "-rf", *args)
        result.assert_outcomes(passed=1, failed=2)
        return sorted(line for line in result.outlines if line.startswith("FAILED")), result

    serial, _ = failures()
    assert serial == [
        "FAILED arithmetic.py::arithmetic.add",
        "FAILED arithmetic.py::arithmetic.double",
    ]
    summary, result = failures("--par=2", f"--par-mode={mode}")
    assert summary == serial  # no stray message after the test id ("- 002 ...")
    # Each example's own output, not another test's ("Got nothing" when two ran at once).
    result.stdout.fnmatch_lines_random(
        ["*>>> add(1, 1)", "Expected:", "    'x'", "Got:", "    'xx'"]
    )


@pytest.mark.parametrize(
    "options",
    [("--par-mode=process",), ("--par-mode=thread",), ("--par-mode=process", "--capture=sys")],
)
def test_each_test_captures_only_its_own_output(
    pytester: pytest.Pytester, options: tuple[str, ...]
) -> None:
    # The tests print at the same time on different workers; each report must hold what
    # its own test printed, and nothing of the others'.
    pytester.makepyfile(
        test_talk="""
        import sys, time, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_talk(i):
            for n in range(20):
                print(f"case {i} line {n}")
                print(f"case {i} error {n}", file=sys.stderr)
                time.sleep(0.005)
        """
    )
    args = ("--par=4", *options, "--junitxml=out.xml", "-o", "junit_logging=all")
    pytester.runpytest_subprocess(*FLAGS, *args).assert_outcomes(passed=4)
    for case in ElementTree.parse(pytester.path / "out.xml").iter("testcase"):
        number = case.get("name", "")[-2]  # test_talk[3] -> 3
        for stream, word in (("system-out", "line"), ("system-err", "error")):
            printed = [line for line in case.findtext(stream, "").splitlines() if line]
            expected = [f"case {number} {word} {n}" for n in range(20)]
            assert [line for line in printed if line.startswith("case")] == expected


def test_large_output_reaches_the_report_intact(pytester: pytest.Pytester) -> None:
    # A report far larger than a pipe holds (64 KiB) travels in parts.
    pytester.makepyfile(
        test_loud="""
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_loud(i):
            print("".join(f"{i}:{n:07d}\\n" for n in range(40_000)), end="")
            print(f"end of case {i}")
            assert i != 2
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", "-rA")
    result.assert_outcomes(passed=3, failed=1)
    output = result.stdout.str()
    for case in range(4):
        assert f"{case}:0039999\n" in output and f"end of case {case}" in output


def test_progress_is_shown_while_tests_run(pytester: pytest.Pytester) -> None:
    # The main process holds terminal output while it has reports to replay; it must
    # still write it as it goes, not at the end.  The last test waits until this test
    # has seen the other tests' progress dots.
    pytester.makepyfile(
        test_live="""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_quick(i):
            pass

        def test_waits_for_the_dots():
            deadline = time.monotonic() + 30
            while not os.path.exists("seen.txt"):
                assert time.monotonic() < deadline, "the progress dots were not shown"
                time.sleep(0.05)
        """
    )
    process = start_pytest(pytester, "--par=2")
    assert process.stdout is not None
    shown = b""
    while b"test_live.py ...." not in shown:
        chunk = process.stdout.read1(1024)
        if not chunk:
            break
        shown += chunk
    (pytester.path / "seen.txt").touch()
    output, _ = process.communicate(timeout=60)
    assert b"5 passed" in output, (shown + output).decode()


SLOW_AND_FAILING = """
import time, pytest

@pytest.mark.parametrize("i", range(8))
def test_each(i):
    time.sleep(0.05 * i)
    print(f"printed by case {i}")
    assert i not in (2, 5)
"""


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_last_failed_and_durations_see_the_parallel_results(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_cases=SLOW_AND_FAILING)
    with_cache = (*FLAGS[2:], "--par=2", f"--par-mode={mode}")  # --lf needs the cache
    first = pytester.runpytest_subprocess(*with_cache, "--durations=2")
    first.assert_outcomes(passed=6, failed=2)
    # The two slowest, slowest first; not their seconds, which a loaded machine stretches.
    first.stdout.fnmatch_lines(
        ["*slowest 2 durations*", "*s call *test_each?7?", "*s call *test_each?6?"]
    )
    rerun = pytester.runpytest_subprocess(*with_cache, "--lf", "-v")
    rerun.assert_outcomes(failed=2)
    rerun.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures"])
    rerun.stdout.fnmatch_lines_random(["*test_each?2? FAILED*", "*test_each?5? FAILED*"])


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_with_s_worker_output_reaches_the_terminal(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_cases=SLOW_AND_FAILING)
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", f"--par-mode={mode}", "-s")
    result.assert_outcomes(passed=6, failed=2)
    printed = re.findall(r"printed by case (\d)", result.stdout.str())
    assert sorted(printed) == [str(i) for i in range(8)]  # each once, as it ran
    assert "Captured stdout" not in result.stdout.str()


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_assertion_explanations_are_those_of_a_serial_run(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(
        test_explained="""
        import pytest

        @pytest.mark.parametrize("i", [0, 1, 3])
        def test_lists(i):
            assert [1, 2, 3] == [1, 2, i]
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", f"--par-mode={mode}")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(["E *At index 2 diff: 3 != 0", "E *At index 2 diff: 3 != 1"])


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_terminal_writer_can_be_used_inside_tests(pytester: pytest.Pytester, mode: str) -> None:
    # As pytest-timeout does when a test times out: in a worker, the text goes to the
    # test's captured output (the terminal belongs to the main process).
    pytester.makepyfile(
        test_writes="""
        import pytest

        @pytest.mark.parametrize("i", range(2))
        def test_writes(request, i):
            request.config.get_terminal_writer().line(f"written by case {i}")
            assert i == 0
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", f"--par-mode={mode}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*written by case 1*"])


@pytest.mark.parametrize(
    "mode", [("--par-mode=process",), ("--par-start=spawn",), ("--par-mode=thread",)]
)
def test_plugins_see_each_report_and_warning_once(
    pytester: pytest.Pytester, mode: tuple[str, ...]
) -> None:
    # As a JSON report log or a result uploader would: one line per report and warning.
    pytester.makeconftest(
        """
        import os

        def log(line):
            with open("seen.txt", "a") as seen:
                seen.write(f"{line} {os.getpid()}\\n")

        def pytest_runtest_logstart(nodeid):
            log(f"start {nodeid}")

        def pytest_runtest_logreport(report):
            log(f"report {report.nodeid} {report.when}")

        def pytest_runtest_logfinish(nodeid):
            log(f"finish {nodeid}")

        def pytest_warning_recorded(warning_message, nodeid):
            log(f"warning {nodeid}")
        """
    )
    pytester.makepyfile(
        test_seen="""
        import time, warnings, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_each(i):
            time.sleep(0.05)
            warnings.warn(f"case {i}")
            assert i != 2
        """
    )

    def seen() -> list[str]:
        lines = (pytester.path / "seen.txt").read_text().splitlines()
        (pytester.path / "seen.txt").unlink()
        return sorted(line.rsplit(" ", 1)[0] for line in lines)

    pytester.runpytest_subprocess(*FLAGS).assert_outcomes(passed=3, failed=1, warnings=4)
    serial = seen()
    pytester.runpytest_subprocess(*FLAGS, "--par=2", *mode).assert_outcomes(
        passed=3, failed=1, warnings=4
    )
    assert seen() == serial


def test_a_terminal_that_cannot_show_a_character_gets_lines_as_in_a_serial_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONIOENCODING", "ascii")
    pytester.makepyfile(  # a module whose name the terminal cannot show
        **{
            "test_caf\u00e9": """
            import pytest

            @pytest.mark.parametrize("word", ["one", "two", "three"])
            def test_word(word):
                assert word
            """
        }
    )

    def progress(*args: str) -> list[str]:
        result = pytester.runpytest_subprocess(*FLAGS, "-v", *args)
        # One line per test, as serial (the percentages follow the order tests finish in).
        return sorted(line.split(" PASSED")[0] for line in result.stdout.lines if "PASSED" in line)

    serial = progress()
    assert len(serial) == 3
    assert progress("--par=2") == serial


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_warnings_plugin_disabled_shows_no_warnings(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(
        test_warns="""
        import warnings

        def test_warns():
            warnings.warn("hello", UserWarning)
        """
    )
    args = (*FLAGS, "-p", "no:warnings", "--par=2", f"--par-mode={mode}")
    result = pytester.runpytest_subprocess(*args)
    assert result.parseoutcomes() == {"passed": 1}
