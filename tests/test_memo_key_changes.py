"""Issue #13: keys that see what a value depends on when it is looked up.

Module data changed during the run (by a parametrized fixture, ``monkeypatch``, a test),
the order of dicts, the code of project functions and objects handed to
``pytest_memo.cache``, enums; and edits that cannot change a value (docstrings, another
checkout's paths) costing no recomputation.  Each test shows what a ``--memo-off`` run
would give.
"""

from __future__ import annotations

from pathlib import Path

from memo_suite import MemoSuite

# -- module data changed during the run -----------------------------------------------

HELPERS = """
MODE = "initial"
ITEMS = []


def mode():
    return MODE


def items():
    return list(ITEMS)


class Config:
    SIZE = 1

    def size(self):
        return self.SIZE
"""


SEE_VALUE = "from memo_log import record\n\ndef test_it(value):\n    record(value, 'seen.txt')\n"


def test_module_data_set_by_a_parametrized_fixture_reaches_each_test(suite: MemoSuite) -> None:
    suite.write("helpers.py", HELPERS)
    suite.write(
        "conftest.py",
        """
        import helpers

        @pytest.fixture(params=["first", "second"])
        def set_mode(request):
            helpers.MODE = request.param
            yield
            helpers.MODE = "initial"

        @pytest.fixture
        @pytest.mark.memo
        def value(set_mode):
            record("value")
            return helpers.mode()
        """,
    )
    suite.write("test_it.py", SEE_VALUE)
    suite.run().assert_outcomes(passed=2)
    assert suite.seen() == ["first", "second"]
    suite.run().assert_outcomes(passed=2)  # and both are hits on the next run
    assert suite.seen()[2:] == ["first", "second"]
    assert suite.calls() == ["value", "value"]


def test_module_data_monkeypatched_by_a_test_reaches_the_fixture(suite: MemoSuite) -> None:
    suite.write("helpers.py", HELPERS)
    suite.write(
        "conftest.py",
        """
        import helpers

        @pytest.fixture
        @pytest.mark.memo
        def value():
            return (helpers.mode(), helpers.Config().size())
        """,
    )
    suite.write(
        "test_it.py",
        """
        import pytest
        import helpers
        from memo_log import record

        @pytest.fixture
        def patched(monkeypatch):
            monkeypatch.setattr(helpers, "MODE", "patched")
            monkeypatch.setattr(helpers.Config, "SIZE", 5)

        def test_plain(value):
            record(value, "seen.txt")

        def test_patched(patched, value):
            record(value, "seen.txt")

        def test_plain_again(value):
            record(value, "seen.txt")
        """,
    )
    suite.run().assert_outcomes(passed=3)
    plain, patched = "('initial', 1)", "('patched', 5)"
    assert suite.seen() == [plain, patched, plain]


def test_a_list_appended_to_during_the_run_changes_the_key(suite: MemoSuite) -> None:
    suite.write("helpers.py", HELPERS)
    suite.write(
        "conftest.py",
        """
        import helpers

        @pytest.fixture(params=[1, 2])
        def add(request):
            helpers.ITEMS.append(request.param)

        @pytest.fixture
        @pytest.mark.memo
        def value(add):
            return helpers.items()
        """,
    )
    suite.write("test_it.py", SEE_VALUE)
    suite.run().assert_outcomes(passed=2)
    assert suite.seen() == ["[1]", "[1, 2]"]


def test_a_global_changed_mid_run_reaches_a_cached_function(suite: MemoSuite) -> None:
    suite.write(
        "helpers.py",
        """
        import pytest_memo

        SCALE = 1

        @pytest_memo.cache
        def scaled(x):
            return x * SCALE
        """,
    )
    suite.write(
        "test_it.py",
        """
        import helpers
        from memo_log import record

        def test_first():
            record(helpers.scaled(2), "seen.txt")

        def test_second():
            helpers.SCALE = 10
            record(helpers.scaled(2), "seen.txt")
        """,
    )
    suite.run().assert_outcomes(passed=2)
    assert suite.seen() == ["2", "20"]


# -- order ----------------------------------------------------------------------------

ORDERED = """
import collections

COLUMNS = {"a": 1, "b": 2}
ORDERED = collections.OrderedDict([("a", 1), ("b", 2)])


@pytest.fixture(params=[{"a": 1, "b": 2}])
@pytest.mark.memo
def from_params(request):
    return list(request.param)


@pytest.fixture
@pytest.mark.memo
def from_module():
    return list(COLUMNS)


@pytest.fixture
@pytest.mark.memo
def from_ordered_dict():
    return list(ORDERED)
"""
ORDER_TEST = """
from memo_log import record

def test_order(from_params, from_module, from_ordered_dict):
    record((from_params, from_module, from_ordered_dict), "seen.txt")
"""


def test_reordering_a_dict_changes_the_key(suite: MemoSuite) -> None:
    suite.write("conftest.py", ORDERED)
    suite.write("test_it.py", ORDER_TEST)
    suite.run().assert_outcomes(passed=1)
    suite.replace("conftest.py", 'COLUMNS = {"a": 1, "b": 2}', 'COLUMNS = {"b": 2, "a": 1}')
    suite.replace("conftest.py", '[("a", 1), ("b", 2)]', '[("b", 2), ("a", 1)]')
    suite.replace("conftest.py", 'params=[{"a": 1, "b": 2}]', 'params=[{"b": 2, "a": 1}]')
    suite.run().assert_outcomes(passed=1)
    assert suite.seen() == [
        "(['a', 'b'], ['a', 'b'], ['a', 'b'])",
        "(['b', 'a'], ['b', 'a'], ['b', 'a'])",
    ]


# -- pytest_memo.cache arguments ------------------------------------------------------

CACHED = """
import pytest_memo


def double(x):
    return 2 * x


class Scaler:
    def scale(self, x):
        return 2 * x


@pytest_memo.cache
def apply(function, x):
    return function(x)


@pytest_memo.cache
def scale_with(scaler, x):
    return scaler.scale(x)
"""
CACHED_TEST = """
import helpers
from memo_log import record

def test_it():
    record((helpers.apply(helpers.double, 3), helpers.scale_with(helpers.Scaler(), 3)), "seen.txt")
"""


def test_cached_function_arguments_count_by_their_code(suite: MemoSuite) -> None:
    suite.write("helpers.py", CACHED)
    suite.write("test_it.py", CACHED_TEST)
    suite.run().assert_outcomes(passed=1)
    suite.replace(
        "helpers.py", "def double(x):\n    return 2 * x", "def double(x):\n    return 3 * x"
    )
    suite.replace(
        "helpers.py",
        "def scale(self, x):\n        return 2 * x",
        "def scale(self, x):\n        return 3 * x",
    )
    suite.run().assert_outcomes(passed=1)
    assert suite.seen() == ["(6, 6)", "(9, 9)"]


# -- enums ----------------------------------------------------------------------------

ENUMS = """
import enum


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 10


class Permission(enum.Flag):
    READ = 1
    WRITE = 2


def describe():
    return [Color.RED.value, int(Level.LOW), (Permission.READ | Permission.WRITE).value]
"""


def test_enums_count_by_their_members(suite: MemoSuite) -> None:
    suite.write("helpers.py", ENUMS)
    suite.write(
        "conftest.py",
        """
        import helpers
        from helpers import Color

        @pytest.fixture
        @pytest.mark.memo
        def direct():
            record("direct")
            return Color.BLUE.value

        @pytest.fixture
        @pytest.mark.memo
        def through_a_helper():
            record("helper")
            return helpers.describe()
        """,
    )
    suite.write(
        "test_it.py",
        "from memo_log import record\n\n"
        "def test_it(direct, through_a_helper):\n"
        "    record((direct, through_a_helper), 'seen.txt')\n",
    )
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["direct", "helper"]  # hits
    suite.replace("helpers.py", "BLUE = 2", "BLUE = 5")
    suite.replace("helpers.py", "LOW = 10", "LOW = 11")
    suite.replace("helpers.py", "WRITE = 2", "WRITE = 4")
    suite.run().assert_outcomes(passed=1)
    assert suite.seen() == ["(2, [1, 10, 3])"] * 2 + ["(5, [1, 11, 5])"]


# -- edits that cannot change a value -------------------------------------------------


def test_docstrings_of_nested_functions_and_of_functions_returning_none_do_not_count(
    suite: MemoSuite,
) -> None:
    suite.write(
        "helpers.py",
        """
        def nothing():
            return None


        def build():
            def inner():
                return 42
            return inner()
        """,
    )
    suite.write(
        "conftest.py",
        """
        import helpers

        @pytest.fixture
        @pytest.mark.memo
        def value():
            record("value")
            return (helpers.nothing(), helpers.build())
        """,
    )
    suite.write("test_it.py", "def test_it(value):\n    assert value == (None, 42)\n")
    suite.run().assert_outcomes(passed=1)
    suite.replace("helpers.py", "def nothing():\n", 'def nothing():\n    """Nothing."""\n')
    suite.replace("helpers.py", "def inner():\n", 'def inner():\n        """The answer."""\n')
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["value"]


def test_checkouts_at_other_paths_share_hits_for_code_mentioning_file(
    suite: MemoSuite, tmp_path: Path
) -> None:
    store = tmp_path / "shared-store"
    checkouts = [tmp_path / "one" / "project", tmp_path / "two" / "elsewhere"]
    for checkout in checkouts:
        checkout.mkdir(parents=True)
        (checkout / "pytest.ini").write_text("[pytest]\n")
        (checkout / "data.txt").write_text("1 2 3\n")
        (checkout / "conftest.py").write_text(
            "import pathlib\nimport pytest\n\n"
            "HERE = pathlib.Path(__file__).parent\n\n"
            "@pytest.fixture\n@pytest.mark.memo(depends=['data.txt'])\n"
            "def numbers():\n"
            "    (HERE / 'calls.txt').open('a').write('numbers\\n')\n"
            "    return (pathlib.Path(__file__).parent / 'data.txt').read_text().split()\n"
        )
        (checkout / "test_it.py").write_text(
            "def test_it(numbers):\n    assert numbers == ['1', '2', '3']\n"
        )
    for checkout in checkouts:
        result = suite.pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(checkout),
            f"--memo-dir={store}",
            str(checkout),
        )
        result.assert_outcomes(passed=1)
    assert (checkouts[0] / "calls.txt").exists()
    assert not (checkouts[1] / "calls.txt").exists()  # a hit


# -- what the key cannot see (docs/memo.md), each with its remedy -----------------------


def after_edit(suite: MemoSuite, edit: tuple[str, str, str]) -> tuple[str, str, str]:
    """Run, make ``edit`` and run again with the store and with ``--memo-off``: what the
    first run saw, and what the two runs after the edit saw."""
    suite.run().assert_outcomes(passed=1)
    suite.replace(*edit)
    suite.run().assert_outcomes(passed=1)
    suite.run("--memo-off").assert_outcomes(passed=1)
    first, memoized, plain = suite.seen()[-3:]
    return first, memoized, plain


def assert_stale(suite: MemoSuite, *edit: str) -> None:
    first, memoized, plain = after_edit(suite, (edit[0], edit[1], edit[2]))
    assert memoized == first != plain


def assert_fresh(suite: MemoSuite, *edit: str) -> None:
    first, memoized, plain = after_edit(suite, (edit[0], edit[1], edit[2]))
    assert memoized == plain != first


def test_a_global_random_generator_seeded_in_conftest_is_not_seen(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import random

        random.seed(1)

        @pytest.fixture
        @pytest.mark.memo
        def noise():
            return random.random()
        """,
    )
    suite.write("test_it.py", SEE_VALUE.replace("value", "noise"))
    assert_stale(suite, "conftest.py", "seed(1)", "seed(2)")
    # The remedy: a generator of the fixture's own, seeded from data its code reads.
    suite.write(
        "conftest.py",
        """
        import random

        SEED = 1

        @pytest.fixture
        @pytest.mark.memo
        def noise():
            return random.Random(SEED).random()
        """,
    )
    assert_fresh(suite, "conftest.py", "SEED = 1", "SEED = 2")


def test_a_module_imported_by_a_name_in_a_variable_is_not_seen(suite: MemoSuite) -> None:
    suite.write("plugin_a.py", "VALUE = 1\n")
    suite.write(
        "conftest.py",
        """
        import importlib

        NAME = "plugin_a"

        @pytest.fixture
        @pytest.mark.memo
        def loaded():
            return importlib.import_module(NAME).VALUE
        """,
    )
    suite.write("test_it.py", SEE_VALUE.replace("value", "loaded"))
    assert_stale(suite, "plugin_a.py", "VALUE = 1", "VALUE = 2")
    # The remedy: the modules' files in depends=.
    suite.replace(
        "conftest.py", "@pytest.mark.memo\n", '@pytest.mark.memo(depends=["plugin_*.py"])\n'
    )
    assert_fresh(suite, "plugin_a.py", "VALUE = 2", "VALUE = 3")


def test_a_name_built_at_run_time_is_not_seen(suite: MemoSuite) -> None:
    suite.write("helpers.py", "def foo():\n    return 1\n")
    suite.write(
        "conftest.py",
        """
        import helpers

        @pytest.fixture
        @pytest.mark.memo
        def built():
            return getattr(helpers, "f" + "oo")()
        """,
    )
    suite.write("test_it.py", SEE_VALUE.replace("value", "built"))
    assert_stale(suite, "helpers.py", "return 1", "return 2")
    # The remedy: name the functions in the code, in a table to choose from.
    suite.replace("conftest.py", 'getattr(helpers, "f" + "oo")()', 'CHOICES["f" + "oo"]()')
    suite.replace(
        "conftest.py", "import helpers\n", 'import helpers\n\nCHOICES = {"foo": helpers.foo}\n'
    )
    assert_fresh(suite, "helpers.py", "return 2", "return 3")
