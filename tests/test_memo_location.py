"""Where the store lives: never around the project itself (a store marks its directory as
a cache that git and backups skip), and nowhere until something is memoized."""

from __future__ import annotations

import subprocess
import sys

import pytest
from memo_suite import MemoSuite

FIXTURE = """
@pytest.fixture
@pytest.mark.memo
def data():
    record("data")
    return [1, 2, 3]
"""
TEST = "def test_data(data):\n    assert data == [1, 2, 3]\n"


@pytest.mark.parametrize("location", [".", "..", "{root}"])
def test_a_store_around_the_project_is_a_usage_error(suite: MemoSuite, location: str) -> None:
    suite.write("conftest.py", FIXTURE)
    suite.write("test_it.py", TEST)
    location = location.format(root=suite.path)
    result = suite.run_subprocess(f"--memo-dir={location}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--memo-dir / memo_dir {location!r} is *, which contains the project*"]
    )
    assert "such as" in result.stderr.str() and ".pytest_memo" in result.stderr.str()
    assert not (suite.path / ".gitignore").exists()
    assert not (suite.path / "CACHEDIR.TAG").exists()
    assert not (suite.path.parent / ".gitignore").exists()


def test_a_store_around_the_project_in_the_ini_is_a_usage_error(suite: MemoSuite) -> None:
    suite.pytester.makeini("[pytest]\nmemo_dir = .\n")
    suite.write("conftest.py", FIXTURE)
    suite.write("test_it.py", TEST)
    result = suite.run_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*memo_dir '.' is *, which contains the project*"])
    assert not (suite.path / ".gitignore").exists()


def test_a_store_inside_the_project_is_fine(suite: MemoSuite) -> None:
    suite.write("conftest.py", FIXTURE)
    suite.write("test_it.py", TEST)
    suite.run_subprocess("--memo-dir=build/memo").assert_outcomes(passed=1)
    suite.run_subprocess("--memo-dir=build/memo").assert_outcomes(passed=1)
    assert suite.calls() == ["data"]
    assert (suite.path / "build/memo/.gitignore").exists()
    assert not (suite.path / ".gitignore").exists()


def test_cache_outside_pytest_refuses_a_store_around_the_current_directory(
    suite: MemoSuite,
) -> None:
    suite.write(
        "script.py",
        """
        import pytest_memo

        @pytest_memo.cache
        def double(x):
            print("computed")
            return 2 * x

        print(double(2), double(2))
        """,
    )
    result = subprocess.run(
        [sys.executable, "script.py"],
        cwd=suite.path,
        env={**__import__("os").environ, "PYTEST_MEMO_DIR": "."},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["computed", "computed", "4", "4"]
    assert "contains the project" in result.stderr and "Traceback" not in result.stderr
    assert not (suite.path / ".gitignore").exists()


PLAIN = """
import pytest

@pytest.fixture
def plain():
    return 1

@pytest.mark.parametrize("i", range(4))
def test_plain(plain, i):
    assert plain == 1
"""


@pytest.mark.parametrize(
    "args",
    [(), ("-p", "no:cacheprovider"), ("--par=2",), ("-p", "no:cacheprovider", "--par=2")],
    ids=["serial", "no-cacheprovider", "par", "par-no-cacheprovider"],
)
def test_nothing_memoized_makes_no_store(suite: MemoSuite, args: tuple[str, ...]) -> None:
    suite.write("test_plain.py", PLAIN)
    result = suite.pytester.runpytest_subprocess(*args, "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=4)
    assert not (suite.path / ".pytest_memo").exists()
    if "no:cacheprovider" in args:
        assert not (suite.path / ".pytest_cache").exists()
    else:  # durations are kept in pytest's own cache
        assert (suite.path / ".pytest_cache/d/pytest_memo/durations.json").exists()


def test_the_store_is_made_when_something_is_memoized(suite: MemoSuite) -> None:
    suite.write("test_plain.py", PLAIN)
    suite.run_subprocess("--memo-clear", "--memo-prune", "--memo-max-size=1MB")
    assert not (suite.path / ".pytest_memo").exists()
    suite.write("conftest.py", FIXTURE)
    suite.write("test_it.py", TEST)
    suite.run_subprocess().assert_outcomes(passed=5)
    assert suite.entries() and suite.calls() == ["data"]
    assert (suite.path / ".pytest_memo/.gitignore").exists()
    assert not list((suite.path / ".pytest_memo").rglob("durations*"))


# The modules that keys, the engine and the store need: a suite that memoizes nothing
# should not pay for importing them (pytest rewrites every plugin module it imports, on
# every run where bytecode cannot be cached, PYTHONDONTWRITEBYTECODE in many CI images).
MEMO_MACHINERY = (
    "pytest_memo.memoize.engine",
    "pytest_memo.memoize.keys",
    "pytest_memo.memoize.fixture",
    "pytest_memo.memoize.cache",
    "pytest_memo.store.local",
    "pytest_memo.core.hashing",
    "pytest_memo.parallel.scheduler",
)
LOADED = f"""
import sys

def test_loaded():
    loaded = [name for name in {MEMO_MACHINERY!r} if name in sys.modules]
    print("LOADED", loaded)
"""


def test_nothing_memoized_loads_no_memo_machinery(suite: MemoSuite) -> None:
    suite.write("test_loaded.py", LOADED)
    result = suite.run_subprocess("-s")
    result.assert_outcomes(passed=1)
    assert "LOADED []" in result.stdout.str()


CACHED_AT_COLLECTION = """
import pytest_memo
from memo_log import record

@pytest_memo.cache
def square(x):
    record("square")
    return x * x

VALUE = square(4)

def test_value():
    assert VALUE == 16
"""


def test_a_cached_function_sets_the_store_up_on_first_call(suite: MemoSuite) -> None:
    # No store yet and no memoized fixture: the run's store is set up when the function
    # is first called (at collection here), and its entry counts in the run's summary.
    suite.write("test_cached.py", CACHED_AT_COLLECTION)
    suite.run_subprocess().stdout.fnmatch_lines(["memo: 0 hits*, 1 miss*"])
    suite.run_subprocess().stdout.fnmatch_lines(["memo: 1 hit*, 0 misses*"])
    assert suite.calls() == ["square"]
    assert (suite.path / ".pytest_memo/.gitignore").exists()


GETFIXTUREVALUE = """
def test_one(request):
    assert request.getfixturevalue("data") == [1, 2, 3]
"""


def test_a_bad_setting_stops_the_run_before_the_store_is_first_needed(suite: MemoSuite) -> None:
    # The store is set up lazily here (no store yet, the fixture is reached only through
    # getfixturevalue): the bad setting must still be a usage error before any test runs.
    suite.pytester.makeini("[pytest]\nmemo_progress_after = soon\n")
    suite.write("conftest.py", FIXTURE)
    suite.write("test_it.py", GETFIXTUREVALUE)
    result = suite.run_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*memo_progress_after: 'soon' is not a number of seconds*"])
    assert suite.calls() == []
