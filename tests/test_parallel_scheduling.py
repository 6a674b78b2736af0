"""pytest --par spreads tests over workers: how many workers, which tests go where
(--par-dist), in what order (recorded durations)."""

from __future__ import annotations

import os

import pytest
from parallel_suite import FLAGS, WITH_CACHE, lines, start_pytest

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
