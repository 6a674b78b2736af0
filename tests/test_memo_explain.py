"""Why values are recomputed (--memo-explain), and what fixtures read that the key now
sees: environment variables by name, files opened while computing, max_age (issue #16).

Every suite logs real computations to ``calls.txt`` (see ``memo_suite.py``).
"""

from __future__ import annotations

import os

import pytest
from memo_suite import MemoSuite

from pytest_memo.memoize.explain import describe

HELPERS = """
import os


def build(n):
    return list(range(n))


def flavour():
    return os.getenv("EXPERIMENT", "plain")


def read_table():
    with open("data/table.csv") as file:
        return file.read()
"""

CONFTEST = """
import helpers


@pytest.fixture
@pytest.mark.memo
def built():
    record("built")
    return helpers.build(3)


@pytest.fixture
@pytest.mark.memo
def scaled(built):
    record("scaled")
    return [x * 2 for x in built]


@pytest.fixture
@pytest.mark.memo(version=2)
def model():
    record("model")
    return "model"


@pytest.fixture
@pytest.mark.memo
def flavour():
    record("flavour")
    return helpers.flavour()


@pytest.fixture
@pytest.mark.memo
def table():
    record("table")
    return helpers.read_table()
"""

TESTS = """
def test_all(built, scaled, model, flavour, table):
    assert scaled == [x * 2 for x in built]
"""


@pytest.fixture
def project(suite: MemoSuite, monkeypatch: pytest.MonkeyPatch) -> MemoSuite:
    monkeypatch.delenv("EXPERIMENT", raising=False)
    suite.write("helpers.py", HELPERS)
    suite.write("data/table.csv", "a,b\n1,2\n")
    suite.write("conftest.py", CONFTEST)
    suite.write("test_it.py", TESTS)
    return suite


def explained(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if line.startswith("memo: "))
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]


def test_first_run_says_there_was_no_earlier_entry(project: MemoSuite) -> None:
    result = project.run("--memo-explain")
    result.assert_outcomes(passed=1)
    assert sorted(explained(result)) == [
        f"{name}: no earlier entry"
        for name in sorted(("built", "scaled", "model", "flavour", "table"))
    ]
    result = project.run("--memo-explain")
    assert explained(result) == []  # nothing computed, nothing to explain


def test_explain_names_the_changed_helper_and_the_recomputed_dependency(
    project: MemoSuite,
) -> None:
    project.run().assert_outcomes(passed=1)
    project.replace("helpers.py", "range(n)", "range(n + 1)")
    result = project.run("--memo-explain")
    result.assert_outcomes(passed=1)
    assert explained(result) == [
        "built: helpers.build changed (helpers.py)",
        "scaled: dependency 'built' was recomputed",
    ]


def test_explain_names_the_fixture_code_and_the_version(project: MemoSuite) -> None:
    project.run().assert_outcomes(passed=1)
    project.replace("conftest.py", "version=2", "version=3")
    project.replace("conftest.py", "return [x * 2 for x in built]", "return [x * 3 for x in built]")
    project.replace("test_it.py", "x * 2", "x * 3")
    result = project.run("--memo-explain")
    assert explained(result) == [
        "scaled: its code changed (conftest.py)",
        "model: version= 2 -> 3",
    ]


def test_environment_variable_read_by_a_helper_is_in_the_key(
    project: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.run().assert_outcomes(passed=1)
    monkeypatch.setenv("EXPERIMENT", "bigger")
    result = project.run("--memo-explain")
    assert explained(result) == ["flavour: $EXPERIMENT changed"]
    assert project.calls().count("flavour") == 2
    project.run().assert_outcomes(passed=1)  # same value again: a hit
    assert project.calls().count("flavour") == 2
    monkeypatch.delenv("EXPERIMENT")
    project.run().assert_outcomes(passed=1)  # back to unset: the first entry again
    assert project.calls().count("flavour") == 2


@pytest.mark.parametrize(
    "read",
    [
        'os.environ["SEED"]',
        'os.environ.get("SEED")',
        'os.getenv("SEED", "0")',
        '"SEED" in os.environ',
    ],
)
def test_every_way_of_reading_a_variable_by_name_is_seen(
    suite: MemoSuite, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    monkeypatch.setenv("SEED", "1")
    suite.write(
        "conftest.py",
        f"""
        import os


        @pytest.fixture
        @pytest.mark.memo
        def seeded():
            record("seeded")
            return {read}
        """,
    )
    suite.write("test_it.py", "def test_it(seeded):\n    pass\n")
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["seeded"]
    monkeypatch.setenv("SEED", "2")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["seeded", "seeded"]


def test_a_data_file_read_while_computing_is_checked_on_every_hit(project: MemoSuite) -> None:
    project.run().assert_outcomes(passed=1)
    table = project.path / "data/table.csv"
    # A touch (new modification time, same content) keeps the entry.
    status = table.stat()
    os.utime(table, ns=(status.st_atime_ns, status.st_mtime_ns + 5_000_000_000))
    project.run().assert_outcomes(passed=1)
    assert project.calls().count("table") == 1
    # An edit does not, even one that keeps the size.
    table.write_text("a,b\n3,4\n")
    result = project.run("--memo-explain")
    assert explained(result) == ["table: data/table.csv changed"]
    assert project.calls().count("table") == 2
    project.run().assert_outcomes(passed=1)
    assert project.calls().count("table") == 2
    table.unlink()
    project.write("data/table.csv", "a,b\n3,4\n")  # deleted and written again: same content
    project.run().assert_outcomes(passed=1)
    assert project.calls().count("table") == 2


def test_files_written_and_files_outside_the_rootdir_are_not_recorded(
    suite: MemoSuite, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "input.txt"
    outside.write_text("1")
    suite.write(
        "conftest.py",
        f"""
        @pytest.fixture
        @pytest.mark.memo
        def data():
            record("data")
            with open("out.txt", "w") as file:
                file.write("written")
            with open({str(outside)!r}) as file:
                return file.read()
        """,
    )
    suite.write("test_it.py", "def test_it(data):\n    pass\n")
    suite.run().assert_outcomes(passed=1)
    (suite.path / "out.txt").write_text("changed by someone else")
    outside.write_text("2")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]


def test_a_cached_function_reading_a_file_inside_a_fixture_counts_for_both(
    suite: MemoSuite,
) -> None:
    suite.write("data.txt", "1")
    suite.write(
        "helpers.py",
        """
        import pytest_memo
        from memo_log import record


        @pytest_memo.cache
        def load():
            record("load")
            with open("data.txt") as file:
                return file.read()
        """,
    )
    suite.write(
        "conftest.py",
        """
        import helpers


        @pytest.fixture
        @pytest.mark.memo
        def data():
            record("data")
            return helpers.load() * 2
        """,
    )
    suite.write("test_it.py", "def test_it(data):\n    pass\n")
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "load"]
    (suite.path / "data.txt").write_text("2")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "load", "data", "load"]


def test_max_age_recomputes_older_entries(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        @pytest.fixture
        @pytest.mark.memo(max_age=1e-9)
        def fresh():
            record("fresh")
            return 1


        @pytest.fixture
        @pytest.mark.memo(max_age="7d")
        def weekly():
            record("weekly")
            return 2
        """,
    )
    suite.write("test_it.py", "def test_it(fresh, weekly):\n    pass\n")
    suite.run().assert_outcomes(passed=1)
    result = suite.run("--memo-explain")
    result.assert_outcomes(passed=1)
    assert suite.calls() == ["fresh", "weekly", "fresh"]
    (line,) = explained(result)
    assert line.startswith("fresh: older than max_age")


def test_a_bad_max_age_of_a_cached_function_is_a_clear_error() -> None:
    import pytest_memo

    with pytest.raises(TypeError, match=r"pytest_memo\.cache: max_age= takes a positive"):
        pytest_memo.cache(max_age="yesterday")


def test_describe_reads_package_versions_options_and_removed_parts() -> None:
    old = {
        "package:numpy": ["a", "numpy==2.4.5", None],
        "option:size": ["b", "1", None],
        "code:helpers.gone": ["c", None, "helpers.py"],
    }
    new = {
        "package:numpy": ["d", "numpy==2.4.6", None],
        "option:size": ["e", "2", None],
    }
    assert describe(old, new) == [
        "helpers.gone removed (helpers.py)",
        "numpy 2.4.5 -> 2.4.6",
        "option size: 1 -> 2",
    ]


# -- the command line: --memo-show, --memo-clear, --memo-max-size ---------------------------

SHOW_FIXTURES = """
@pytest.fixture
@pytest.mark.memo(version=7)
def alpha():
    record("alpha")
    return "a"


@pytest.fixture(params=[1, 2])
@pytest.mark.memo
def beta(request):
    record(f"beta{request.param}")
    return request.param
"""


@pytest.fixture
def shown(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", SHOW_FIXTURES)
    suite.write("test_it.py", "def test_both(alpha, beta):\n    pass\n")
    suite.run().assert_outcomes(passed=2)
    return suite


def test_memo_show_filters_by_name_and_shows_parameters_and_totals(shown: MemoSuite) -> None:
    result = shown.run("--memo-show=be*")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "fixture  param  *key*size*created*last used*hits*saved",
            "beta     1  *",
            "beta     2  *",
            "2 entries of 1 fixture, *B, 0.0 s saved so far",  # size: B or KB
        ]
    )
    assert "alpha" not in result.stdout.str()
    shown.run("--memo-show=gamma").stdout.fnmatch_lines(["no stored values match 'gamma'"])


def test_memo_show_verbose_shows_each_entry_s_parts(shown: MemoSuite) -> None:
    result = shown.run("--memo-show=alpha", "-v")
    result.stdout.fnmatch_lines(
        ["alpha  *", "    code: * (conftest.py)", "    version: 7", "    python: 3.*"]
    )


def test_memo_clear_says_what_it_removed_or_that_nothing_matched(shown: MemoSuite) -> None:
    result = shown.run("--memo-clear=gamma")
    result.stdout.fnmatch_lines(
        ["memo: *; --memo-clear=gamma: no stored values of a fixture named 'gamma'"]
    )
    shown.run("--memo-clear=beta").stdout.fnmatch_lines(
        ["memo: *; 2 of fixture 'beta' removed (--memo-clear)"]
    )
    shown.run("--memo-clear").stdout.fnmatch_lines(["memo: *; 3 removed (--memo-clear)"])
    shown.run("--memo-max-size=1B").stdout.fnmatch_lines(
        ["memo: *; 3 least recently used removed (--memo-max-size 1 B)"]
    )


# -- pytest_memo.cache: clear() and check_call_in_cache() ----------------------------------


def test_cached_function_clear_and_check_call_in_cache(suite: MemoSuite) -> None:
    suite.write(
        "test_it.py",
        """
        import pytest_memo
        from memo_log import record


        @pytest_memo.cache
        def square(x):
            record(f"square{x}")
            return x * x


        @pytest_memo.cache
        def other(x):
            return x


        def test_it():
            assert not square.check_call_in_cache(2)
            assert square(2) == 4 and square(3) == 9 and other(1) == 1
            assert square.check_call_in_cache(2)
            assert square.check_call_in_cache(x=3)
            assert not square.check_call_in_cache(4)
            assert square.clear() == 2
            assert not square.check_call_in_cache(2)
            assert other.check_call_in_cache(1)  # another function's values stay
            assert square(2) == 4
        """,
    )
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["square2", "square3", "square2"]


# -- warnings point at the user's code ------------------------------------------------------


def test_warnings_point_at_the_fixture_and_the_cached_function(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import threading

        import pytest_memo


        @pytest.fixture
        @pytest.mark.memo(depends=["missing/*.csv"])
        def lock():
            return threading.Lock()


        @pytest_memo.cache
        def make_lock():
            return threading.Lock()
        """,
    )
    suite.write(
        "test_it.py", "from conftest import make_lock\n\ndef test_it(lock):\n    make_lock()\n"
    )
    result = suite.run()
    result.assert_outcomes(passed=1, warnings=3)
    # A function's first line is its first decorator: line 10 of the conftest (after the
    # suite's prelude and the imports) for the fixture, 16 for the cached function.
    result.stdout.fnmatch_lines(
        [
            "*conftest.py:10: MemoWarning: pytest-memo: depends pattern 'missing/*.csv'*",
            "*conftest.py:10: MemoWarning: pytest-memo: the value of fixture 'lock' could not*",
            "*conftest.py:16: MemoWarning: pytest-memo: the value of function *make_lock*",
        ],
        consecutive=False,
    )
    assert "engine.py" not in result.stdout.str()
    assert "fixture.py" not in result.stdout.str()


# -- honest numbers ---------------------------------------------------------------------------


def test_time_saved_counts_each_value_once_however_many_workers_load_it(
    suite: MemoSuite,
) -> None:
    from test_memo_store import SLOW_PAIR, TEST_PAIR, summary

    suite.write("conftest.py", SLOW_PAIR)
    suite.write("test_it.py", TEST_PAIR + "\n\ndef test_again(slow):\n    pass\n")
    _, _, misses, computed, _, _, _ = summary(suite.run_subprocess())
    assert misses == 3
    # Warm, with each worker loading the session fixture 'slow': the time saved is the time
    # those three values took to compute, once each.
    hits, saved, misses, _, _, _, _ = summary(suite.run_subprocess("-n", "2"))
    assert misses == 0 and hits >= 3
    assert abs(saved - computed) <= 0.1


def test_a_long_computation_is_named_on_the_terminal_with_its_reason(suite: MemoSuite) -> None:
    suite.pytester.makeini("[pytest]\nmemo_progress_after = 0.05\n")
    suite.write(
        "conftest.py",
        """
        import time


        @pytest.fixture
        @pytest.mark.memo(version=1)
        def training_set():
            time.sleep(1)  # well past memo_progress_after
            return 1
        """,
    )
    suite.write("test_it.py", "def test_it(training_set):\n    pass\n")
    result = suite.run_subprocess()
    result.stdout.fnmatch_lines(["memo: computing training_set (no earlier entry)..."])
    suite.replace("conftest.py", "version=1", "version=2")
    result = suite.run_subprocess()
    result.stdout.fnmatch_lines(["memo: computing training_set (version= 1 -> 2)..."])
    result = suite.run_subprocess()  # a hit: nothing to say
    assert "computing" not in result.stdout.str()


# -- early cutoff -------------------------------------------------------------------------------


def test_an_upstream_edit_giving_the_same_value_does_not_recompute_downstream(
    project: MemoSuite,
) -> None:
    project.run().assert_outcomes(passed=1)
    project.replace("helpers.py", "return list(range(n))", "return [i for i in range(n)]")
    result = project.run("--memo-explain")
    result.assert_outcomes(passed=1)
    assert explained(result) == ["built: helpers.build changed (helpers.py)"]
    assert project.calls().count("built") == 2
    assert project.calls().count("scaled") == 1  # same list: scaled's entry still fits
    project.replace("helpers.py", "for i in range(n)]", "for i in range(n + 1)]")
    result = project.run("--memo-explain")
    assert explained(result) == [
        "built: helpers.build changed (helpers.py)",
        "scaled: dependency 'built' was recomputed",
    ]
    assert project.calls().count("scaled") == 2
