"""Read-only stores: one that cannot be written (a CI cache restored read-only, a read-only
mount, another user's store) and one used read-only on purpose (``--memo-read-only``).
Every stored entry is served, misses are computed and counted, nothing is written.

Permissions are real.  As a normal user the store is made read-only with ``chmod -R a-w``;
as root, which writes whatever the modes say, pytest runs as the unprivileged user
``nobody`` (uid 65534), who owns a copy of the project but not its store.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from memo_suite import SPEED_FLAGS, MemoSuite

NOBODY = 65534
SIX = "".join(
    f"""
@pytest.fixture
@pytest.mark.memo
def f{n}():
    record("f{n}")
    return {n} * 10
"""
    for n in range(6)
)
TESTS = "".join(f"def test_{n}(f{n}):\n    assert f{n} == {n} * 10\n\n" for n in range(6))
SUMMARY = re.compile(r"^memo: (\d+) hits? .*, (\d+) miss(?:es)? .*$", re.MULTILINE)


def counts(result: pytest.RunResult) -> tuple[int, int]:
    found = SUMMARY.findall(result.stdout.str())
    assert len(found) == 1, result.stdout.str()
    return int(found[0][0]), int(found[0][1])


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``directory`` with its size and modification time."""
    return {
        str(path.relative_to(directory)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
    }


Runner = Callable[..., tuple[pytest.RunResult, Path]]


@pytest.fixture
def unwritable(suite: MemoSuite) -> Iterator[Runner]:
    """Run pytest on the suite while its store cannot be written; returns the result and
    the project directory it ran in (to count computations there)."""
    made: list[Path] = []

    def run(*args: str) -> tuple[pytest.RunResult, Path]:
        store = suite.path / ".pytest_memo"
        if os.geteuid() != 0:
            for path in [store, *store.rglob("*")]:
                path.chmod(path.lstat().st_mode & ~0o222)
            try:
                return suite.run_subprocess(*args), suite.path
            finally:
                for path in [store, *store.rglob("*")]:
                    path.chmod(path.lstat().st_mode | stat.S_IWUSR)
        # As root: a copy of the project in a directory nobody can reach, owned by
        # nobody except for the store (root's, modes 755/644: nobody cannot write it).
        work = Path(tempfile.mkdtemp(prefix="memo-read-only-"))
        made.append(work)
        work.chmod(0o755)
        project = work / "project"
        shutil.copytree(
            suite.path, project, symlinks=True, ignore=shutil.ignore_patterns("runpytest-*")
        )
        for path in [project, *project.rglob("*")]:
            if ".pytest_memo" not in path.relative_to(project).parts:
                os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        environment.update(HOME=str(project), PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *SPEED_FLAGS, *args],
            cwd=project,
            user=NOBODY,
            group=NOBODY,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(done.stdout, done.stderr)  # shown when the test fails
        result = pytest.RunResult(
            done.returncode, done.stdout.splitlines(), done.stderr.splitlines(), 0.0
        )
        return result, project

    yield run
    for work in made:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def six(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", SIX)
    suite.write("test_it.py", TESTS)
    suite.run_subprocess().assert_outcomes(passed=6)
    assert len(suite.calls()) == 6 and len(suite.entries()) == 6
    (suite.path / "calls.txt").unlink()
    return suite


def calls(project: Path) -> list[str]:
    log = project / "calls.txt"
    return log.read_text().split() if log.exists() else []


def test_an_unwritable_store_serves_every_entry_and_counts_misses(
    six: MemoSuite, unwritable: Runner
) -> None:
    six.replace("conftest.py", 'record("f5")', 'record(f"f{5}")')  # edited: a miss
    before = snapshot(six.path / ".pytest_memo")
    result, project = unwritable()
    result.assert_outcomes(passed=6, warnings=1)
    assert calls(project) == ["f5"]
    assert counts(result) == (5, 1)
    result.stdout.fnmatch_lines(
        ["*cannot write to the store in *: it is used read-only for the rest of this run*"]
    )
    assert "(read-only: nothing stored)" in result.stdout.str()
    assert snapshot(project / ".pytest_memo") == before


def test_with_xdist_an_unwritable_store_warns_once(six: MemoSuite, unwritable: Runner) -> None:
    result, project = unwritable("-n", "2")
    result.assert_outcomes(passed=6, warnings=1)
    assert calls(project) == []
    assert counts(result) == (6, 0)


def test_a_damaged_entry_in_an_unwritable_store_is_recomputed_and_left(
    six: MemoSuite, unwritable: Runner
) -> None:
    damaged = six.entries()[0]
    damaged.write_bytes(damaged.read_bytes()[:-40])
    before = snapshot(six.path / ".pytest_memo")
    result, project = unwritable()
    result.assert_outcomes(passed=6)
    assert len(calls(project)) == 1
    assert counts(result) == (5, 1)
    result.stdout.fnmatch_lines(["*recomputed a damaged entry of fixture *read-only store*"])
    assert "Traceback" not in result.stdout.str()
    assert snapshot(project / ".pytest_memo") == before


def test_show_lists_an_unwritable_store(six: MemoSuite, unwritable: Runner) -> None:
    result, _ = unwritable("--memo-show")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    for n in range(6):
        result.stdout.fnmatch_lines([f"*f{n} *"])


def test_read_only_on_purpose_writes_nothing(six: MemoSuite) -> None:
    six.replace("conftest.py", 'record("f5")', 'record(f"f{5}")')  # edited: a miss
    before = snapshot(six.path / ".pytest_memo")
    for _ in range(2):
        result = six.run_subprocess("--memo-read-only", "-n", "2")
        result.assert_outcomes(passed=6)  # no warning: asked for
        assert counts(result) == (5, 1)
    assert six.calls() == ["f5", "f5"]
    assert snapshot(six.path / ".pytest_memo") == before  # no entry, index, lock file


def test_read_only_from_the_ini_writes_no_store_and_no_durations(suite: MemoSuite) -> None:
    suite.pytester.makeini("[pytest]\nmemo_read_only = true\nmemo_max_size = 1GB\n")
    suite.write("conftest.py", SIX)
    suite.write("test_it.py", TESTS)
    for _ in range(2):
        result = suite.pytester.runpytest_subprocess(*SPEED_FLAGS)
        result.assert_outcomes(passed=6)
        assert counts(result) == (0, 6)
    assert len(suite.calls()) == 12
    assert not (suite.path / ".pytest_memo").exists()
    assert not (suite.path / ".pytest_cache/d/pytest_memo").exists()


@pytest.mark.parametrize("option", ["--memo-prune", "--memo-clear", "--memo-max-size=1GB"])
def test_read_only_refuses_options_that_write(suite: MemoSuite, option: str) -> None:
    suite.write("conftest.py", SIX)
    suite.write("test_it.py", TESTS)
    result = suite.run_subprocess("--memo-read-only", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option.split('=')[0]} writes to the store*drop one*"])


@pytest.mark.skipif(__import__("importlib").util.find_spec("fsspec") is None, reason="needs fsspec")
def test_read_only_on_purpose_uploads_nothing_to_a_remote_store(six: MemoSuite) -> None:
    remote = six.path.parent / f"{six.path.name}-remote"
    url = f"file://{remote}"
    six.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=6)  # uploads all six
    (six.path / "calls.txt").unlink()
    shutil.rmtree(six.path / ".pytest_memo/remote")  # a fresh machine: downloads
    six.replace("conftest.py", 'record("f5")', 'record(f"f{5}")')  # edited: a miss
    before = snapshot(remote)
    result = six.run_subprocess(f"--memo-dir={url}", "--memo-read-only")
    result.assert_outcomes(passed=6)
    assert counts(result) == (5, 1) and six.calls() == ["f5"]
    assert snapshot(remote) == before
