"""pytest --par options: usage errors, options that fall back to a serial run, and what
workers share or are given (base temporary directory, memo store, thread caps)."""

from __future__ import annotations

import os

import pytest
from parallel_suite import FLAGS, lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--par=abc",), "--par takes a number of workers or 'auto'"),
        (("--par=2", "-n", "2"), "--par and pytest-xdist's -n both distribute tests"),
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
