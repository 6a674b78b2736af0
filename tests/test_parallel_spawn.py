"""--par-start=spawn: workers that are new interpreters, as on platforms without fork."""

from __future__ import annotations

import pytest

# The passing tests take a while: quick tests all go to the first worker that asks, as
# one worker runs them sooner than two would (a round trip to the controller each).
SUITE = """
import os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_pass(i):
    time.sleep(0.05)
    with open("pids.txt", "a") as pids:
        pids.write(f"{os.getpid()}\\n")

def test_fail():
    assert False

@pytest.mark.skip(reason="no")
def test_skip():
    pass

def test_crash():
    print("printed before os._exit", flush=True)
    os._exit(5)
"""


def test_spawned_workers_give_the_serial_outcomes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    serial = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "not crash")
    (pytester.path / "pids.txt").unlink()
    spawned = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "not crash", "--par=2", "--par-start=spawn", timeout=120
    )
    assert spawned.parseoutcomes() == serial.parseoutcomes()
    pids = set((pytester.path / "pids.txt").read_text().split())
    assert len(pids) == 2  # both workers ran tests, none ran in the main process


def test_a_spawned_worker_that_crashes_is_replaced(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--par=2", "--par-start=spawn", timeout=120
    )
    result.assert_outcomes(passed=6, failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*test_crash*crashed: its worker process exited with code 5*",
            "*Captured stdout before the worker stopped*",
            "printed before os._exit",
        ]
    )


def test_different_collection_in_a_worker_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_random="""
        import random, pytest

        @pytest.mark.parametrize("x", [random.random() for _ in range(3)])
        def test_random(x):
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--par=2", "--par-start=spawn", timeout=120
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*spawned worker collected other tests than the main process*"])
