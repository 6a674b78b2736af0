"""Memoized fixtures: the decorator, scopes, parameters, the command line and the marks.

Every suite's fixtures log each real computation to ``calls.txt`` (see ``memo_suite.py``):
a hit is a run that adds no line there.  Keys and invalidation are in test_memo_keys.py;
damage, concurrency, eviction and the summary in test_memo_store.py.
"""

from __future__ import annotations

import os

import pytest
from memo_suite import MemoSuite

TEST_DATA = """
def test_data(data):
    assert data == {"answer": 42}
"""

# -- the decorator --------------------------------------------------------------

DECORATOR_ORDERS = {
    "mark above fixture": "@pytest.mark.memo\n@pytest.fixture\n",
    "mark below fixture": "@pytest.fixture\n@pytest.mark.memo\n",
    "mark with options above fixture": "@pytest.mark.memo(version=1)\n@pytest.fixture\n",
    "mark with options below fixture": "@pytest.fixture\n@pytest.mark.memo(version=1)\n",
    "imported memo above fixture": "@memo\n@pytest.fixture\n",
    "imported memo below fixture": "@pytest.fixture\n@memo(version=1)\n",
}


@pytest.mark.parametrize("decorators", DECORATOR_ORDERS.values(), ids=DECORATOR_ORDERS.keys())
def test_decorator_order_memoizes_without_error_or_warning(
    suite: MemoSuite, decorators: str
) -> None:
    suite.write(
        "conftest.py",
        "from pytest_memo import memo\n\n\n"
        + decorators
        + 'def data():\n    record("data")\n    return {"answer": 42}\n',
    )
    suite.write("test_it.py", TEST_DATA)
    for _ in range(2):
        result = suite.run("-W", "error")
        result.assert_outcomes(passed=1, warnings=0)  # and no "Marks cannot be applied"
        assert "Marks cannot be applied" not in result.stdout.str()
    assert suite.calls() == ["data"]


@pytest.mark.parametrize("scope", ["function", "class", "module", "package", "session"])
def test_every_scope_is_computed_once_across_runs(suite: MemoSuite, scope: str) -> None:
    suite.write("pkg/__init__.py", "")
    suite.write(
        "pkg/conftest.py",
        f"""
        @pytest.fixture(scope="{scope}")
        @pytest.mark.memo
        def data():
            record("data")
            return {{"answer": 42}}
        """,
    )
    suite.write(
        "pkg/test_it.py",
        """
        class TestGroup:
            def test_one(self, data):
                assert data == {"answer": 42}

            def test_two(self, data):
                assert data == {"answer": 42}


        def test_three(data):
            assert data == {"answer": 42}
        """,
    )
    suite.run().assert_outcomes(passed=3)
    assert suite.calls() == ["data"]  # even function scope: later tests hit the entry
    suite.run().assert_outcomes(passed=3)
    assert suite.calls() == ["data"]
    assert len(suite.entries()) == 1


def test_each_param_has_its_own_entry(suite: MemoSuite) -> None:
    conftest = """
        @pytest.fixture(params=[1, 2, 3])
        @pytest.mark.memo
        def data(request):
            record(f"p{request.param}")
            return {"param": request.param, "tenfold": request.param * 10}
        """
    suite.write("conftest.py", conftest)
    suite.write(
        "test_it.py",
        """
        from memo_log import record


        def test_data(data):
            assert data["tenfold"] == data["param"] * 10
            record(data["param"], "seen.txt")
        """,
    )
    suite.run().assert_outcomes(passed=3)
    assert sorted(suite.calls()) == ["p1", "p2", "p3"]
    assert len(suite.entries()) == 3
    suite.run().assert_outcomes(passed=3)
    assert sorted(suite.calls()) == ["p1", "p2", "p3"]
    assert sorted(suite.seen()) == ["1", "1", "2", "2", "3", "3"]  # each test got its own


def test_a_fixture_returning_none_is_stored(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        @pytest.fixture
        @pytest.mark.memo
        def nothing():
            record("nothing")
            return None
        """,
    )
    suite.write("test_it.py", "def test_nothing(nothing):\n    assert nothing is None\n")
    suite.run().assert_outcomes(passed=1)
    result = suite.run()
    result.assert_outcomes(passed=1)
    assert suite.calls() == ["nothing"]
    result.stdout.fnmatch_lines(["memo: 1 hit (*), 0 misses (*"])


def test_memo_fixtures_ini_memoizes_fixtures_by_name(suite: MemoSuite) -> None:
    suite.pytester.makeini("[pytest]\nmemo_fixtures = listed also_listed\n")
    suite.write(
        "conftest.py",
        """
        @pytest.fixture(scope="session")
        def listed():
            record("listed")
            return 1


        @pytest.fixture(scope="session")
        def unlisted():
            record("unlisted")
            return 2
        """,
    )
    suite.write("test_it.py", "def test_it(listed, unlisted):\n    assert listed + unlisted == 3\n")
    for _ in range(2):
        suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["listed", "unlisted", "unlisted"]


# -- marks ----------------------------------------------------------------------


def test_markers_lists_memo(suite: MemoSuite) -> None:
    result = suite.run("--markers")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["@pytest.mark.memo(*version*ignore*depends*): *"])


def test_strict_markers_accepts_memo_on_fixtures_and_tests(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        @pytest.mark.memo(version=1)
        @pytest.fixture
        def data():
            record("data")
            return {"answer": 42}
        """,
    )
    suite.write(
        "test_it.py",
        """
        import pytest


        def test_data(data):
            assert data == {"answer": 42}


        @pytest.mark.memo
        def test_marked():
            pass
        """,
    )
    suite.run("--strict-markers", "-W", "error").assert_outcomes(passed=2, warnings=0)


def test_dash_m_memo_selects_marked_test_functions(suite: MemoSuite) -> None:
    suite.write(
        "test_it.py",
        """
        import pytest
        from pytest_memo import memo


        @pytest.mark.memo
        def test_marked():
            pass


        @memo(version=2)
        def test_marked_with_options():
            pass


        @pytest.mark.memo
        class TestMarked:
            def test_in_class(self):
                pass


        def test_unmarked():
            pass
        """,
    )
    result = suite.run("-m", "memo", "-v")
    result.assert_outcomes(passed=3, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "*::test_marked PASSED*",
            "*::test_marked_with_options PASSED*",
            "*::TestMarked::test_in_class PASSED*",
        ]
    )
    suite.run("-m", "not memo").assert_outcomes(passed=1, deselected=3)


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        ("@pytest.mark.memo(bogus=1)", "*pytest.mark.memo got unknown option(s) bogus; valid*"),
        ('@pytest.mark.memo("positional")', "*pytest.mark.memo takes keyword options only*"),
        ("@pytest.mark.memo(ignore=3)", "*ignore= takes a string or a list of strings, got 3*"),
        *(
            (f"@pytest.mark.memo(max_age={bad!r})", f"*max_age= takes a positive number*{bad!r}")
            for bad in ("soon", "-1h", 0, "12x", True)
        ),
    ],
)
def test_bad_mark_options_are_a_clear_collection_error(
    suite: MemoSuite, decorator: str, message: str
) -> None:
    suite.write(
        "test_it.py",
        f"""
        import pytest


        {decorator}
        @pytest.fixture
        def data():
            return 1


        def test_data(data):
            pass
        """,
    )
    result = suite.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR collecting test_it.py*", message])


# -- the command line -------------------------------------------------------------

TWO_FIXTURES = """
@pytest.fixture(scope="session")
@pytest.mark.memo
def alpha():
    record("alpha")
    return "a"


@pytest.fixture(scope="session", params=[1, 2])
@pytest.mark.memo
def beta(request):
    record(f"beta{request.param}")
    return request.param
"""

TEST_TWO = """
def test_both(alpha, beta):
    assert alpha == "a"
    assert beta in (1, 2)
"""


@pytest.fixture
def warm(suite: MemoSuite) -> MemoSuite:
    """A suite with a filled store: alpha (one entry) and beta (two)."""
    suite.write("conftest.py", TWO_FIXTURES)
    suite.write("test_it.py", TEST_TWO)
    suite.run().assert_outcomes(passed=2)
    assert sorted(suite.calls()) == ["alpha", "beta1", "beta2"]
    assert len(suite.entries()) == 3
    return suite


def test_memo_clear_removes_every_entry(warm: MemoSuite) -> None:
    warm.run("--memo-clear").assert_outcomes(passed=2)
    assert sorted(warm.calls()) == ["alpha", "alpha", "beta1", "beta1", "beta2", "beta2"]
    warm.run().assert_outcomes(passed=2)
    assert len(warm.calls()) == 6


def test_memo_clear_name_removes_only_that_fixture(warm: MemoSuite) -> None:
    warm.run("--memo-clear=beta").assert_outcomes(passed=2)
    assert sorted(warm.calls()[3:]) == ["beta1", "beta2"]  # alpha was a hit


def test_memo_clear_before_a_path_is_a_usage_error(warm: MemoSuite) -> None:
    # The option's value is optional, so "--memo-clear test_it.py" would take the path as
    # a fixture name, clear nothing and run without the path.
    result = warm.run("--memo-clear", "test_it.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--memo-clear took 'test_it.py' as the name of a fixture, but it is a path*"]
    )
    assert len(warm.calls()) == 3
    assert len(warm.entries()) == 3


def test_memo_clear_after_a_path_clears_everything(warm: MemoSuite) -> None:
    warm.run("test_it.py", "--memo-clear").assert_outcomes(passed=2)
    assert len(warm.calls()) == 6


def test_memo_clear_alone_runs_nothing_else(warm: MemoSuite) -> None:
    # Cleared without running the tests: nothing was recomputed, the store is empty.
    result = warm.run("--memo-clear", "--collect-only")
    assert result.ret == 0
    assert warm.entries() == []
    assert len(warm.calls()) == 3


def snapshot(directory: os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            status = os.stat(path)
            found[os.path.relpath(path, directory)] = (status.st_size, status.st_mtime_ns)
    return found


def test_memo_off_computes_and_does_not_create_a_store(suite: MemoSuite) -> None:
    suite.write("conftest.py", TWO_FIXTURES)
    suite.write("test_it.py", TEST_TWO)
    for _ in range(2):
        result = suite.run("--memo-off")
        result.assert_outcomes(passed=2)
        assert "memo:" not in result.stdout.str()
    assert len(suite.calls()) == 6
    assert not (suite.path / ".pytest_memo").exists()


def test_memo_off_leaves_an_existing_store_untouched(warm: MemoSuite) -> None:
    before = snapshot(warm.path / ".pytest_memo")
    warm.run("--memo-off").assert_outcomes(passed=2)
    assert len(warm.calls()) == 6
    assert snapshot(warm.path / ".pytest_memo") == before


def test_memo_refresh_recomputes_and_later_runs_hit_the_new_value(suite: MemoSuite) -> None:
    # The fixture reads a file outside the rootdir, which neither its key nor the files
    # recorded with its entry cover: only a refresh notices the change.
    source = suite.path.parent / f"{suite.path.name}-source.txt"
    suite.write(
        "conftest.py",
        f"""
        @pytest.fixture
        @pytest.mark.memo
        def data():
            record("data")
            with open({str(source)!r}) as source:
                return source.read()
        """,
    )
    suite.write(
        "test_it.py",
        """
        from memo_log import record


        def test_data(data):
            record(data, "seen.txt")


        def test_again(data):
            record(data, "seen.txt")
        """,
    )
    source.write_text("old")
    suite.run().assert_outcomes(passed=2)
    source.write_text("new")
    suite.run().assert_outcomes(passed=2)
    assert suite.seen() == ["old"] * 4  # the stale entry, as expected without a refresh
    # Recomputed once: the second test loads what the first one stored during this run.
    suite.run("--memo-refresh").assert_outcomes(passed=2)
    assert suite.calls() == ["data", "data"]
    suite.run().assert_outcomes(passed=2)
    assert suite.calls() == ["data", "data"]
    assert suite.seen() == ["old"] * 4 + ["new"] * 4
    assert len(suite.entries()) == 1


REFRESH_SUITE = {
    "conftest.py": """
        @pytest.fixture(scope="session")
        @pytest.mark.memo
        def data():
            record("data")
            with open("source.txt") as source:
                return source.read()
        """,
    "test_it.py": "".join(
        f"""
def test_{n}(data):
    assert data == open("source.txt").read()
"""
        for n in range(4)
    ),
}


def write_refresh_suite(suite: MemoSuite) -> None:
    for name, source in REFRESH_SUITE.items():
        suite.write(name, source)
    suite.write("source.txt", "old")


def test_memo_refresh_recomputes_entries_with_timestamps_in_the_future(
    suite: MemoSuite,
) -> None:
    # A CI cache restored with future timestamps (or a clock that went back) was not
    # refreshed: --memo-refresh compared file times with the clock.
    write_refresh_suite(suite)
    suite.run().assert_outcomes(passed=4)
    (entry,) = suite.entries()
    a_day_ahead = entry.stat().st_mtime + 86_400
    os.utime(entry, (a_day_ahead, a_day_ahead))
    suite.write("source.txt", "new")
    suite.run("--memo-refresh").assert_outcomes(passed=4)
    assert suite.calls() == ["data", "data"]
    suite.run().assert_outcomes(passed=4)
    assert suite.calls() == ["data", "data"]


@pytest.mark.parametrize(
    "workers",
    [("-n", "2"), ("--par=2", "--par-start=fork"), ("--par=2", "--par-start=spawn")],
    ids=["xdist", "par fork", "par spawn"],
)
def test_memo_refresh_recomputes_once_per_run_in_every_worker(
    suite: MemoSuite, workers: tuple[str, ...]
) -> None:
    write_refresh_suite(suite)
    suite.run().assert_outcomes(passed=4)
    for entry in suite.entries():
        os.utime(entry, (entry.stat().st_mtime + 86_400,) * 2)
    suite.write("source.txt", "new")
    # Every worker knows the run: the value one computed is loaded by the others.
    suite.run_subprocess(*workers, "--memo-refresh").assert_outcomes(passed=4)
    assert suite.calls() == ["data", "data"]


def test_memo_show_lists_fixtures_and_exits_without_running_tests(warm: MemoSuite) -> None:
    result = warm.run("--memo-show")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*pytest-memo store: *.pytest_memo*",
            "fixture *key*size*created*last used*hits*saved",
            "alpha *",
            "beta *",
            "beta *",
        ]
    )
    assert result.parseoutcomes().get("passed") is None
    assert "test_both" not in result.stdout.str()
    assert len(warm.calls()) == 3


def test_memo_show_on_an_empty_store(suite: MemoSuite) -> None:
    result = suite.run("--memo-show")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*pytest-memo store:*", "(empty)"])


@pytest.mark.parametrize("how", ["option", "ini"])
def test_memo_dir_moves_the_store(suite: MemoSuite, how: str) -> None:
    suite.write("conftest.py", TWO_FIXTURES)
    suite.write("test_it.py", TEST_TWO)
    args: tuple[str, ...] = ()
    if how == "option":
        args = ("--memo-dir=elsewhere/store",)
    else:
        suite.pytester.makeini("[pytest]\nmemo_dir = elsewhere/store\n")
    for _ in range(2):
        result = suite.run(*args)
        result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["memo: 3 hits *, store * in elsewhere/store"])
    assert len(suite.calls()) == 3
    assert len(suite.entries("elsewhere/store")) == 3
    assert (suite.path / "elsewhere/store/CACHEDIR.TAG").exists()
    assert not (suite.path / ".pytest_memo").exists()


def test_memo_dir_outside_the_rootdir(
    suite: MemoSuite, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = tmp_path_factory.mktemp("outside") / "store"
    suite.write("conftest.py", TWO_FIXTURES)
    suite.write("test_it.py", TEST_TWO)
    for _ in range(2):
        suite.run(f"--memo-dir={store}").assert_outcomes(passed=2)
    assert len(suite.calls()) == 3
    assert len(list(store.glob("v1/entries/*/*.memo"))) == 3


def test_bad_max_size_is_a_usage_error(suite: MemoSuite) -> None:
    suite.write("test_it.py", "def test_it():\n    pass\n")
    result = suite.run("--memo-max-size=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memo-max-size*cannot read the size 'lots'*"])
