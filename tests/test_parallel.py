"""pytest --par: the same outcomes as a serial run, spread over workers, robust to crashes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
WITH_CACHE = FLAGS[2:]  # durations are kept in pytest's cache

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


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


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


def start_pytest(pytester: pytest.Pytester, *args: str, **options: Any) -> subprocess.Popen[Any]:
    """pytest in a process of its own, its output (stderr included) on a pipe."""
    command = [sys.executable, "-m", "pytest", *FLAGS, *args]
    return subprocess.Popen(
        command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options
    )


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


PIDS = """
import os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_pid(i):
    time.sleep(0.1)
    with open("pids.txt", "a") as pids:
        pids.write(f"{os.getpid()}\\n")
"""


@pytest.mark.parametrize(("value", "workers"), [("0", 1), ("1", 1), ("3", 3)])
def test_worker_counts(pytester: pytest.Pytester, value: str, workers: int) -> None:
    pytester.makepyfile(test_pids=PIDS)
    result = pytester.runpytest_subprocess(*FLAGS, f"--par={value}")
    result.assert_outcomes(passed=6)
    assert len(set((pytester.path / "pids.txt").read_text().split())) == workers


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
@pytest.mark.parametrize("cpus", [1, 2])
def test_auto_uses_the_cpus_this_process_may_use(pytester: pytest.Pytester, cpus: int) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < cpus:
        pytest.skip(f"needs {cpus} CPUs")
    pytester.makepyfile(test_pids=PIDS)
    process = start_pytest(
        pytester,
        "--par=auto",
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, allowed[:cpus]),
    )
    output, _ = process.communicate(timeout=60)
    assert "6 passed" in output, output
    assert (f"par: {cpus} workers" in output) == (cpus > 1)  # one CPU: a plain serial run
    assert len(set((pytester.path / "pids.txt").read_text().split())) == cpus


def test_no_more_workers_than_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_two="""
        import os
        def test_a():
            open("pids.txt", "a").write(f"{os.getpid()}\\n")
        def test_b():
            open("pids.txt", "a").write(f"{os.getpid()}\\n")
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=8", "-v")
    result.assert_outcomes(passed=2)
    assert len(set((pytester.path / "pids.txt").read_text().split())) <= 2


def test_a_few_long_tests_are_split_evenly(pytester: pytest.Pytester) -> None:
    # 8 tests of equal length on 4 workers finish soonest at 2 each; a worker given a
    # third would run for 3 lengths while another ran 1, or none.
    pytester.makepyfile(
        test_long="""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(8))
        def test_long(i):
            time.sleep(0.2)
            open("pids.txt", "a").write(f"{os.getpid()}\\n")
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=4")
    result.assert_outcomes(passed=8)
    pids = (pytester.path / "pids.txt").read_text().split()
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2, 2, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--par=abc",), "--par takes a number of workers or 'auto'"),
        (("--par=2", "-n", "2"), "--par and pytest-xdist's -n/--dist both distribute tests"),
        (
            ("--par=2", "--par-mode=thread", "--par-timeout=5"),
            "--par-timeout needs --par-mode=process",
        ),
    ],
)
def test_usage_errors(pytester: pytest.Pytester, args: tuple[str, ...], message: str) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess(*FLAGS, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("--pdb", "--pdb and --trace need one process"),
        (
            "--setup-show",
            "--setup-show, --setup-only and --setup-plan list fixtures as one process*",
        ),
    ],
)
def test_options_that_need_one_process_fall_back_to_serial(
    pytester: pytest.Pytester, option: str, reason: str
) -> None:
    pytester.makepyfile(
        test_two="""
        import os, pytest

        @pytest.fixture
        def value():
            return 1

        @pytest.mark.parametrize("i", range(2))
        def test_two(i, value):
            with open("pids.txt", "a") as pids:
                pids.write(f"{os.getpid()}\\n")
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", option)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines([f"*--par: running serially, as {reason}*"])
    assert len(set((pytester.path / "pids.txt").read_text().split())) == 1
    if option == "--setup-show":
        result.stdout.fnmatch_lines(["*SETUP    F value*", "*TEARDOWN F value*"])


SLOW_AND_FAILING = """
import time, pytest

@pytest.mark.parametrize("i", range(8))
def test_each(i):
    time.sleep(0.03 * i)
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
    first.stdout.fnmatch_lines(
        ["*slowest 2 durations*", "0.2?s call *test_each?7?", "0.1?s call *test_each?6?"]
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


@pytest.mark.parametrize(("preset", "workers"), [(None, 2), ("3", 2), (None, 0)])
def test_numeric_library_threads_are_capped_in_workers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, preset: str | None, workers: int
) -> None:
    from pytest_memo.core.cpus import usable_cpus

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if preset is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, preset)
    pytester.makepyfile(
        test_threads="""
        import os

        def test_record():
            names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            with open("threads.txt", "w") as out:
                out.write(" ".join(os.environ.get(name, "unset") for name in names))
        """
    )
    pytester.runpytest_subprocess(*FLAGS, f"--par={workers}").assert_outcomes(passed=1)
    if preset is not None:
        expected = preset  # the user's choice is kept
    elif workers > 1:
        expected = str(max(1, usable_cpus() // workers))
    else:
        expected = "unset"  # a serial run changes nothing
    assert (pytester.path / "threads.txt").read_text().split() == [expected] * 3


def test_scope_distribution_keeps_a_module_on_one_worker(pytester: pytest.Pytester) -> None:
    for name in ("first", "second", "third"):
        pytester.makepyfile(
            **{
                f"test_{name}": f"""
                import os, time, pytest

                @pytest.mark.parametrize("i", range(4))
                def test_it(i):
                    time.sleep(0.05)
                    open("pids.txt", "a").write("{name} " + str(os.getpid()) + "\\n")
                """
            }
        )
    pytester.runpytest_subprocess(*FLAGS, "--par=2", "--par-dist=scope").assert_outcomes(passed=12)
    by_module: dict[str, set[str]] = {}
    for module, pid in lines(pytester.path / "pids.txt"):
        by_module.setdefault(module, set()).add(pid)
    assert all(len(pids) == 1 for pids in by_module.values())


def test_thread_mode_rules(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_threads="""
        import threading, time, pytest

        @pytest.fixture(scope="session")
        def once():
            open("session.txt", "a").write("set up\\n")
            yield
            open("session.txt", "a").write("torn down\\n")

        def span(name):
            start = time.monotonic()
            time.sleep(0.2)
            open("spans.txt", "a").write(f"{name} {start} {time.monotonic()}\\n")

        @pytest.mark.parametrize("i", range(6))
        def test_parallel(i, once):
            span(f"parallel{i}")

        @pytest.mark.serial
        def test_alone(once):
            span("alone")
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=3", "--par-mode=thread")
    result.assert_outcomes(passed=7)
    assert (pytester.path / "session.txt").read_text().split("\n")[:2] == ["set up", "torn down"]
    spans = {name: (float(a), float(b)) for name, a, b in lines(pytester.path / "spans.txt")}
    alone_start, alone_end = spans.pop("alone")
    for start, end in spans.values():
        assert end <= alone_start or start >= alone_end  # nothing overlapped the serial test
    assert any(  # and the others did run at the same time
        a[0] < b[1] and b[0] < a[1] for a in spans.values() for b in spans.values() if a != b
    )


def test_thread_mode_runs_tests_that_change_process_state_alone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_state="""
        import logging, os, time, warnings, pytest

        @pytest.fixture
        def home(monkeypatch):  # monkeypatch reached through another fixture
            monkeypatch.setenv("HOME_FOR_TEST", "x")
            return "x"

        @pytest.mark.parametrize("i", range(3))
        def test_capsys(capsys, i):
            print(f"hello {i}")
            time.sleep(0.1)
            assert capsys.readouterr().out == f"hello {i}\\n"

        @pytest.mark.parametrize("i", range(3))
        def test_capfd(capfd, i):
            os.write(1, f"fd {i}\\n".encode())
            time.sleep(0.1)  # the main thread's progress output must not land here
            assert capfd.readouterr().out == f"fd {i}\\n"

        @pytest.mark.parametrize("i", range(3))
        def test_caplog(caplog, i):
            logging.getLogger("mine").warning("record %s", i)
            time.sleep(0.1)
            assert [r.getMessage() for r in caplog.records] == [f"record {i}"]

        @pytest.mark.parametrize("i", range(3))
        def test_recwarn(recwarn, i):
            warnings.warn(f"warning {i}")
            time.sleep(0.1)
            assert [str(w.message) for w in recwarn] == [f"warning {i}"]

        @pytest.mark.parametrize("i", range(3))
        def test_monkeypatch(monkeypatch, i):
            monkeypatch.setenv("VALUE_FOR_TEST", str(i))
            time.sleep(0.1)
            assert os.environ["VALUE_FOR_TEST"] == str(i)

        @pytest.mark.parametrize("i", range(3))
        def test_indirect(home, i):
            time.sleep(0.1)
            assert os.environ["HOME_FOR_TEST"] == home
            os.environ["HOME_FOR_TEST"] = "changed"  # undone by monkeypatch's teardown

        def test_ordinary():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=4", "--par-mode=thread", "-v")
    result.assert_outcomes(passed=19)
    result.stdout.fnmatch_lines(["par: 18 of 19 tests ran alone in thread mode: doctests, or*"])


FIXTURE_SCOPES = {
    "conftest": """
    import pytest

    def log(line):
        with open("log.txt", "a") as out:
            out.write(line + "\\n")

    @pytest.fixture(scope="session")
    def session_value():
        log("set up session")
        yield object()
        log("tear down session")

    @pytest.fixture(scope="module")
    def module_name(request):
        log(f"set up module {request.module.__name__}")
        yield request.module.__name__
        log(f"tear down module {request.module.__name__}")

    @pytest.fixture(scope="class")
    def class_name(request):
        return request.cls.__name__

    @pytest.fixture(scope="module", params=["a", "b"])
    def backend(request):
        log(f"open {request.param}")
        value = {"name": request.param, "open": True}
        yield value
        value["open"] = False
        log(f"close {request.param}")

    @pytest.fixture(scope="module")
    def client(backend):  # depends on a parametrized fixture: one per parameter
        return f"client of {backend['name']}"

    @pytest.fixture
    def fresh(tmp_path):
        value = []
        yield value
        value.append("torn down")
    """,
    "test_one": """
    import time, pytest

    def test_module(module_name, session_value):
        time.sleep(0.1)
        assert module_name == "test_one"

    class TestA:
        def test_a(self, class_name):
            time.sleep(0.1)
            assert class_name == "TestA"

    class TestB:
        def test_b(self, class_name):
            time.sleep(0.1)
            assert class_name == "TestB"

    @pytest.mark.parametrize("i", range(3))
    def test_backend(i, backend, client, fresh, tmp_path):
        fresh.append(i)
        (tmp_path / "case").write_text(str(i))
        time.sleep(0.1)  # the others run meanwhile
        assert backend["open"] and client == f"client of {backend['name']}"
        assert fresh == [i] and (tmp_path / "case").read_text() == str(i)
    """,
    "test_two": """
    import time

    def test_module(module_name, session_value):
        time.sleep(0.1)
        assert module_name == "test_two"
    """,
}


def test_thread_mode_gives_fixtures_the_values_of_a_serial_run(pytester: pytest.Pytester) -> None:
    # Tests that run at the same time still get their own function-scoped values, the
    # class- and module-scoped values made for their class and module, and the values
    # made for their parameters; each is set up and torn down once.
    conftest = FIXTURE_SCOPES["conftest"]
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_one=FIXTURE_SCOPES["test_one"], test_two=FIXTURE_SCOPES["test_two"])
    serial = pytester.runpytest_subprocess(*FLAGS)
    serial.assert_outcomes(passed=10)
    serial_log = sorted((pytester.path / "log.txt").read_text().splitlines())
    (pytester.path / "log.txt").unlink()
    result = pytester.runpytest_subprocess(*FLAGS, "--par=4", "--par-mode=thread")
    result.assert_outcomes(passed=10)
    assert result.duration < serial.duration * 0.75  # tests did run at the same time
    assert sorted((pytester.path / "log.txt").read_text().splitlines()) == serial_log


def test_memoized_fixture_is_computed_once_across_workers(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import time, pytest

        @pytest.fixture(scope="session")
        @pytest.mark.memo
        def expensive():
            open("calls.txt", "a").write("computed\\n")
            time.sleep(1)
            return list(range(100))
        """
    )
    pytester.makepyfile(
        test_uses="""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(8))
        def test_use(i, expensive):
            open("pids.txt", "a").write(f"{os.getpid()}\\n")
            assert expensive[i] == i
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--memo-clear")
    result.assert_outcomes(passed=8)
    assert (pytester.path / "calls.txt").read_text().split() == ["computed"]
    assert len(set((pytester.path / "pids.txt").read_text().split())) == 2
    result.stdout.fnmatch_lines(["memo: 1 hit *, 1 miss *"])


def test_durations_are_recorded_in_pytests_cache(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    pytester.runpytest_subprocess(*WITH_CACHE, "--par=2").assert_outcomes(passed=2)
    recorded = (pytester.path / ".pytest_cache/d/pytest_memo/durations.json").read_text()
    assert "test_one.py::test_one" in recorded and "test_one.py::test_two" in recorded


def test_a_long_test_recorded_on_an_earlier_run_starts_first(pytester: pytest.Pytester) -> None:
    # Collected last, in the module with the smaller total, the long test would start
    # late and keep one worker busy after the other ran out of work.
    log = """
import os
def log(name):
    with open("ran.txt", "a") as ran:
        ran.write(f"{os.getpid()} {name}\\n")
"""
    pytester.makepyfile(
        test_a=log
        + """
import time, pytest

@pytest.mark.parametrize("i", range(12))
def test_short(i):
    log(f"short{i}")
    time.sleep(0.1)
""",
        test_b=log
        + """
import time

def test_quick():
    log("quick")

def test_long():
    log("long")
    time.sleep(1.0)
""",
    )
    pytester.runpytest_subprocess(*WITH_CACHE, "--par=2").assert_outcomes(passed=14)
    (pytester.path / "ran.txt").unlink()
    pytester.runpytest_subprocess(*WITH_CACHE, "--par=2").assert_outcomes(passed=14)
    rows = [line.split() for line in (pytester.path / "ran.txt").read_text().splitlines()]
    long_worker = next(pid for pid, name in rows if name == "long")
    ran_there = [name for pid, name in rows if pid == long_worker]
    ran_elsewhere = [name for pid, name in rows if pid != long_worker]
    assert ran_there[0] == "long"
    assert len(ran_there) < len(ran_elsewhere)


@pytest.mark.parametrize("tests", [1, 2, 3])
def test_few_tests_do_not_wait_for_more(pytester: pytest.Pytester, tests: int) -> None:
    # A worker given a single item waits to learn whether another follows: the
    # controller must say "no more" without waiting for that worker first.
    pytester.makepyfile(test_few="".join(f"def test_{n}():\n    pass\n\n" for n in range(tests)))
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", timeout=30)
    result.assert_outcomes(passed=tests)


@pytest.mark.parametrize(
    "mode", [("--par-mode=process",), ("--par-mode=thread",), ("--par-start=spawn",)]
)
@pytest.mark.parametrize("basetemp", [False, True])
def test_workers_share_one_base_temporary_directory(
    pytester: pytest.Pytester, mode: tuple[str, ...], basetemp: bool
) -> None:
    # Each worker making its own would leave one locked directory per worker, and with
    # --basetemp each would empty the directory the others' tests were writing in.
    pytester.makepyfile(
        test_files="""
        import os, threading, time, pytest

        @pytest.mark.parametrize("i", range(6))
        def test_file(i, tmp_path):
            (tmp_path / "data").write_text(str(i))
            time.sleep(0.2)
            assert (tmp_path / "data").read_text() == str(i)
            with open(os.environ["RAN_LOG"], "a") as log:
                base = tmp_path.parent
                if base.name.startswith("worker-"):  # a spawned worker's, inside the run's
                    base = base.parent
                log.write(f"{os.getpid()}-{threading.get_ident()} {base}\\n")
        """
    )
    log = pytester.path / "ran.txt"
    options = [f"--basetemp={pytester.path / 'base'}"] if basetemp else []
    os.environ["RAN_LOG"] = str(log)
    try:
        result = pytester.runpytest_subprocess(*FLAGS, "--par=3", *mode, *options)
    finally:
        del os.environ["RAN_LOG"]
    result.assert_outcomes(passed=6)
    rows = lines(log)
    assert len({worker for worker, _ in rows}) > 1  # really spread over workers
    assert len({base for _, base in rows}) == 1
    if basetemp:
        assert {base for _, base in rows} == {str(pytester.path / "base")}


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


def test_thread_mode_warns_when_a_plugin_replaces_the_test_protocol(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest
        from _pytest.runner import runtestprotocol

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_protocol(item, nextitem):
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            runtestprotocol(item, nextitem=nextitem)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        """
    )
    pytester.makepyfile(test_two="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    warning = "*--par-mode=thread runs pytest's own test protocol, so the one of *conftest.py*"
    thread = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--par-mode=thread")
    thread.assert_outcomes(passed=2, warnings=1)
    thread.stdout.fnmatch_lines([warning])
    process = pytester.runpytest_subprocess(*FLAGS, "--par=2")
    process.assert_outcomes(passed=2)


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


def test_thread_mode_fails_the_run_on_an_error_in_a_shared_fixture_teardown(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_teardown="""
        import pytest

        @pytest.fixture(scope="module")
        def resource():
            yield 1
            raise RuntimeError("teardown went wrong")

        @pytest.mark.parametrize("i", range(3))
        def test_uses(i, resource):
            assert resource == 1
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--par-mode=thread")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*error while tearing down shared fixtures: RuntimeError('teardown went wrong')*",
            '*raise RuntimeError("teardown went wrong")',
        ]
    )
    assert "pytest_memo" not in result.stdout.str()


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
