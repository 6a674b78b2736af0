"""What a memoized fixture's key covers: which edits invalidate an entry and which do not.

Each test runs a suite, changes one thing, and counts the computations the next run
makes (``calls.txt``), and checks that the tests see the new value when there is one.
"""

from __future__ import annotations

import os

import pytest
from memo_suite import MemoSuite

FIXTURE = '''
@pytest.fixture
@pytest.mark.memo(version=1)
def data():
    """The answer."""
    record("data")
    return {"answer": 42, "items": [1, 2, 3]}
'''

TEST_SEEN = """
from memo_log import record


def test_data(data):
    record(data, "seen.txt")
"""


@pytest.fixture
def cached(suite: MemoSuite) -> MemoSuite:
    """A suite whose fixture ``data`` has been computed and stored once."""
    suite.write("conftest.py", FIXTURE)
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]
    return suite


def test_second_run_hits(cached: MemoSuite) -> None:
    cached.run().assert_outcomes(passed=1)
    assert cached.calls() == ["data"]
    assert cached.seen() == ["{'answer': 42, 'items': [1, 2, 3]}"] * 2


def test_code_edit_invalidates(cached: MemoSuite) -> None:
    cached.replace("conftest.py", '"answer": 42', '"answer": 43')
    cached.run().assert_outcomes(passed=1)
    assert cached.calls() == ["data", "data"]
    assert cached.seen()[-1] == "{'answer': 43, 'items': [1, 2, 3]}"


def test_version_bump_invalidates(cached: MemoSuite) -> None:
    cached.replace("conftest.py", "version=1", "version=2")
    cached.run().assert_outcomes(passed=1)
    assert cached.calls() == ["data", "data"]


NEUTRAL_EDITS = {
    "comment": ('    record("data")\n', '    # a comment\n    record("data")  # and another\n'),
    "docstring changed": ('"""The answer."""', '"""The answer, documented at length."""'),
    "docstring removed": ('    """The answer."""\n', ""),
    "blank lines": ('    record("data")\n', '\n    record("data")\n\n'),
    "moved down the file": ("@pytest.fixture\n", "\n\n\n\n@pytest.fixture\n"),
    "reformatted": (
        'return {"answer": 42, "items": [1, 2, 3]}',
        'return {\n        "answer": 42,\n        "items": [1, 2, 3],\n    }',
    ),
    "unrelated code added": (
        "@pytest.fixture\n",
        "def unrelated():\n    return 7\n\n\n@pytest.fixture\n",
    ),
}


@pytest.mark.parametrize("edit", NEUTRAL_EDITS.values(), ids=NEUTRAL_EDITS.keys())
def test_edits_that_do_not_change_the_code_do_not_invalidate(
    cached: MemoSuite, edit: tuple[str, str]
) -> None:
    cached.replace("conftest.py", *edit)
    result = cached.run()
    result.assert_outcomes(passed=1)
    assert cached.calls() == ["data"]
    result.stdout.fnmatch_lines(["memo: 1 hit *, 0 misses *, 0 invalidated*"])


def test_adding_a_docstring_does_not_invalidate(suite: MemoSuite) -> None:
    suite.write("conftest.py", FIXTURE.replace('    """The answer."""\n', ""))
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    suite.replace("conftest.py", "def data():\n", 'def data():\n    """Documented now."""\n')
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]


def test_reverting_an_edit_hits_the_old_entry(cached: MemoSuite) -> None:
    original = (cached.path / "conftest.py").read_text()
    cached.replace("conftest.py", '"answer": 42', '"answer": 43')
    cached.run().assert_outcomes(passed=1)
    assert cached.calls() == ["data", "data"]
    assert len(cached.entries()) == 2  # the entry of the old code is kept
    (cached.path / "conftest.py").write_text(original)
    cached.run().assert_outcomes(passed=1)
    assert cached.calls() == ["data", "data"]
    assert cached.seen()[-1] == "{'answer': 42, 'items': [1, 2, 3]}"


def test_param_change_computes_only_the_new_param(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        @pytest.fixture(params=[1, 2])
        @pytest.mark.memo
        def data(request):
            record(f"p{request.param}")
            return request.param * 10
        """,
    )
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=2)
    suite.replace("conftest.py", "params=[1, 2]", "params=[1, 3]")
    suite.run().assert_outcomes(passed=2)
    assert sorted(suite.calls()) == ["p1", "p2", "p3"]
    assert sorted(suite.seen()) == ["10", "10", "20", "30"]


# -- dependencies -----------------------------------------------------------------


def test_chain_hits_both_fixtures(suite: MemoSuite) -> None:
    suite.write("conftest.py", CHAIN)
    suite.write("test_it.py", TEST_SEEN)
    for _ in range(2):
        suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["inner", "outer"]
    assert suite.seen() == ["[1, 2]", "[1, 2]"]


CHAIN = """
@pytest.fixture(scope="session")
@pytest.mark.memo
def inner():
    record("inner")
    return [1, 2]


@pytest.fixture
@pytest.mark.memo
def data(inner):
    record("outer")
    return list(inner)
"""


def test_editing_the_inner_fixture_of_a_chain_invalidates_the_outer(suite: MemoSuite) -> None:
    suite.write("conftest.py", CHAIN)
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    suite.replace("conftest.py", "return [1, 2]", "return [1, 2, 3]")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["inner", "outer", "inner", "outer"]
    assert suite.seen() == ["[1, 2]", "[1, 2, 3]"]


def test_inner_code_change_with_the_same_value_keeps_the_outer(suite: MemoSuite) -> None:
    # Early cutoff: a memoized dependency enters the key by the content of its value, so
    # an edit of the inner fixture that gives the same value keeps the outer's entry.
    suite.write("conftest.py", CHAIN)
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    suite.replace("conftest.py", "return [1, 2]", "return [int('1'), 2]")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["inner", "outer", "inner"]


def test_editing_the_outer_fixture_of_a_chain_keeps_the_inner(suite: MemoSuite) -> None:
    suite.write("conftest.py", CHAIN)
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    suite.replace("conftest.py", "return list(inner)", "return list(inner) * 2")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["inner", "outer", "outer"]
    assert suite.seen() == ["[1, 2]", "[1, 2, 1, 2]"]


PLAIN_DEPENDENCY = """
@pytest.fixture
def base():
    with open("base.txt") as source:
        return source.read()


@pytest.fixture
@pytest.mark.memo
def data(base):
    record("data")
    return base.upper()
"""


def test_a_plain_dependency_enters_the_key_by_value(suite: MemoSuite) -> None:
    suite.write("conftest.py", PLAIN_DEPENDENCY)
    suite.write("test_it.py", TEST_SEEN)
    suite.write("base.txt", "one")
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]
    suite.write("base.txt", "two")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]
    assert suite.seen() == ["ONE", "ONE", "TWO"]


def test_a_plain_dependency_code_edit_with_the_same_value_does_not_invalidate(
    suite: MemoSuite,
) -> None:
    suite.write("conftest.py", PLAIN_DEPENDENCY)
    suite.write("test_it.py", TEST_SEEN)
    suite.write("base.txt", "one")
    suite.run().assert_outcomes(passed=1)
    suite.replace("conftest.py", "return source.read()", "return source.read().strip()")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]


def test_ignore_leaves_dependencies_out_of_the_key(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        @pytest.fixture
        def noise():
            with open("noise.txt") as source:
                return source.read()


        @pytest.fixture
        @pytest.mark.memo(ignore=["noise", "tmp_path"])
        def data(noise, tmp_path):
            record("data")
            return 1
        """,
    )
    suite.write("test_it.py", TEST_SEEN)
    suite.write("noise.txt", "one")
    suite.run().assert_outcomes(passed=1)
    suite.write("noise.txt", "two")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]


DEPENDS = """
@pytest.fixture
@pytest.mark.memo(depends=["inputs/*.csv"])
def data():
    record("data")
    return sorted(path.read_text() for path in Path("inputs").glob("*.csv"))
"""


@pytest.fixture
def with_inputs(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", "from pathlib import Path\n" + DEPENDS)
    suite.write("test_it.py", TEST_SEEN)
    suite.write("inputs/a.csv", "1,2\n")
    suite.write("inputs/notes.txt", "not a csv")
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]
    return suite


def test_depends_file_content_change_invalidates(with_inputs: MemoSuite) -> None:
    with_inputs.write("inputs/a.csv", "1,3\n")  # same size
    with_inputs.run().assert_outcomes(passed=1)
    assert with_inputs.calls() == ["data", "data"]
    assert with_inputs.seen()[-1] == "['1,3\\n']"


def test_depends_new_matching_file_invalidates(with_inputs: MemoSuite) -> None:
    with_inputs.write("inputs/b.csv", "3,4\n")
    with_inputs.run().assert_outcomes(passed=1)
    assert with_inputs.calls() == ["data", "data"]


def test_depends_ignores_mtime_and_unmatched_files(with_inputs: MemoSuite) -> None:
    path = with_inputs.path / "inputs/a.csv"
    os.utime(path, (path.stat().st_atime + 100, path.stat().st_mtime + 100))
    with_inputs.write("inputs/notes.txt", "changed, but not a csv")
    with_inputs.run().assert_outcomes(passed=1)
    assert with_inputs.calls() == ["data"]


def test_depends_pattern_matching_nothing_warns(suite: MemoSuite) -> None:
    suite.write("conftest.py", "from pathlib import Path\n" + DEPENDS)
    suite.write("test_it.py", TEST_SEEN)
    result = suite.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*MemoWarning*'inputs/*.csv' of fixture 'data' matches no file*"])


# -- project helpers ----------------------------------------------------------------


def assert_the_edit_invalidates(suite: MemoSuite, path: str, edit: tuple[str, str]) -> None:
    """The suite's fixture ``data`` hits on a second run, and is computed again, with a new
    value, once ``edit`` is made to the file at ``path``."""
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]
    suite.replace(path, *edit)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]
    assert suite.seen()[-1] != suite.seen()[0]


HELPERS = """
SCALE = 10


class Shifter:
    offset = 0

    def apply(self, values):
        return [value + self.offset for value in values]


def build(n):
    return Shifter().apply([scale(i) for i in range(n)])


def scale(i):
    return i * SCALE
"""

# The two ways a fixture reaches a helper: a name imported from it, an attribute of it.
CALLERS = {
    "from-import": ("from helpers import build", "build(3)"),
    "module attribute": ("import helpers", "helpers.build(3)"),
}
HELPER_EDITS = {
    "called helper": ("in range(n)]", "in range(n + 1)]"),
    "helper of the helper": ("return i * SCALE", "return i * SCALE + 1"),
    "constant the helper reads": ("SCALE = 10", "SCALE = 100"),
    "method of a class the helper uses": ("value + self.offset", "value - self.offset - 1"),
    "class attribute": ("offset = 0", "offset = 5"),
}


def calling(caller: tuple[str, str]) -> str:
    """A conftest whose memoized fixture ``data`` calls the helper."""
    import_line, call = caller
    return (
        f"{import_line}\n\n\n@pytest.fixture\n@pytest.mark.memo\n"
        f"def data():\n    record('data')\n    return {call}\n"
    )


@pytest.mark.parametrize("caller", CALLERS.values(), ids=CALLERS.keys())
@pytest.mark.parametrize("edit", HELPER_EDITS.values(), ids=HELPER_EDITS.keys())
def test_editing_a_project_helper_the_fixture_calls_invalidates(
    suite: MemoSuite, caller: tuple[str, str], edit: tuple[str, str]
) -> None:
    suite.write("helpers.py", HELPERS)
    suite.write("conftest.py", calling(caller))
    suite.write("test_it.py", TEST_SEEN)
    assert_the_edit_invalidates(suite, "helpers.py", edit)


def test_editing_an_unrelated_helper_does_not_invalidate(suite: MemoSuite) -> None:
    suite.write("helpers.py", HELPERS + "\n\ndef unrelated():\n    return 1\n")
    suite.write("conftest.py", calling(CALLERS["from-import"]))
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    suite.replace("helpers.py", "return 1", "return 2")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]


@pytest.mark.parametrize(
    "body",
    ["request.node.name", "request.node.name.upper().lower()"],
    ids=["reads request.node", "calls a method of what it reads"],
)
def test_a_fixture_reading_the_requesting_test_is_stored_per_test(
    suite: MemoSuite, body: str
) -> None:
    suite.write("naming.py", "def name_of(request):\n    return request.node.name\n")
    suite.write(
        "conftest.py",
        f"""
        from naming import name_of


        @pytest.fixture
        @pytest.mark.memo
        def test_name(request):
            record("name")
            return {body}
        """,
    )
    suite.write(
        "test_it.py",
        "def test_one(test_name):\n    assert test_name == 'test_one'\n\n"
        "def test_two(test_name):\n    assert test_name == 'test_two'\n",
    )
    suite.run().assert_outcomes(passed=2)
    suite.run().assert_outcomes(passed=2)
    assert suite.calls() == ["name", "name"]


# What a fixture reads of the requesting test, and the test module before and after an
# edit that keeps the test's id: (fixture body, test module with {v} for the value).
TEST_READS = {
    "marker": (
        'request.node.get_closest_marker("size").args[0]',
        "import pytest\n\n\n@pytest.mark.size({v})\ndef test_it(data):\n"
        "    record(data, 'seen.txt')\n",
    ),
    "module attribute": (
        "request.module.SIZE",
        "SIZE = {v}\n\n\ndef test_it(data):\n    record(data, 'seen.txt')\n",
    ),
    "class attribute": (
        "request.cls.SIZE",
        "class TestIt:\n    SIZE = {v}\n\n    def test_it(self, data):\n"
        "        record(data, 'seen.txt')\n",
    ),
    "callspec parameter": (
        'request.node.callspec.params["n"]',
        "import pytest\n\n\n@pytest.mark.parametrize('n', [{v}], ids=['same'])\n"
        "def test_it(data, n):\n    record(data, 'seen.txt')\n",
    ),
    "config.option": ("request.config.option.size", None),
    "config.getoption": ('request.config.getoption("size")', None),
}


@pytest.mark.parametrize("read", TEST_READS.values(), ids=TEST_READS.keys())
def test_an_edit_to_what_a_fixture_reads_of_the_requesting_test_is_never_stale(
    suite: MemoSuite, read: tuple[str, str | None]
) -> None:
    # Each of these served the value computed before the edit.
    body, test_module = read
    suite.write(
        "conftest.py",
        f"""
        def pytest_addoption(parser):
            parser.addoption("--size", type=int, default=0)


        @pytest.fixture
        @pytest.mark.memo
        def data(request):
            record("data")
            return {body}
        """,
    )
    template = test_module or "def test_it(data):\n    record(data, 'seen.txt')\n"
    for value in (1, 1, 2, 2):
        suite.write("test_it.py", "from memo_log import record\n" + template.format(v=value))
        suite.run("-W", "error::pytest_memo.MemoWarning", f"--size={value}").assert_outcomes(
            passed=1
        )
    assert suite.seen() == ["1", "1", "2", "2"]
    assert suite.calls() == ["data", "data"]  # memoized, once per value


def test_a_fixture_handing_request_to_other_code_is_computed_with_a_warning(
    suite: MemoSuite,
) -> None:
    # The helper may read anything of the test (here a module attribute): not memoized.
    suite.write("naming.py", "def size_of(request):\n    return request.module.SIZE\n")
    suite.write(
        "conftest.py",
        """
        from naming import size_of


        @pytest.fixture
        @pytest.mark.memo
        def data(request):
            record("data")
            return size_of(request)
        """,
    )
    for value in (1, 2):
        suite.write(
            "test_it.py", f"SIZE = {value}\n\n\ndef test_it(data):\n    assert data == SIZE\n"
        )
        result = suite.run()
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(
            [
                "*MemoWarning: pytest-memo: fixture 'data' hands request to other code, which "
                "may read the requesting test, which cannot enter its key, so it is computed, "
                "not memoized; read what it needs in a fixture that is not memoized*"
            ]
        )
    assert suite.calls() == ["data", "data"]


# Reaching a helper through an import in the fixture's body, or through a submodule.
INDIRECT_CALLERS = {
    "import inside the fixture": ("helpers.py", "", "    from helpers import build\n", "build(3)"),
    "submodule attribute": ("pkg/helpers.py", "import pkg.helpers", "", "pkg.helpers.build(3)"),
}


@pytest.mark.parametrize("caller", INDIRECT_CALLERS.values(), ids=INDIRECT_CALLERS.keys())
@pytest.mark.parametrize("edit", HELPER_EDITS.values(), ids=HELPER_EDITS.keys())
def test_editing_a_helper_reached_indirectly_invalidates(
    suite: MemoSuite, caller: tuple[str, str, str, str], edit: tuple[str, str]
) -> None:
    helper_path, import_line, inner_import, call = caller
    if helper_path.startswith("pkg/"):
        suite.write("pkg/__init__.py", "")
    suite.write(helper_path, HELPERS)
    suite.write(
        "conftest.py",
        f"{import_line}\n\n\n@pytest.fixture\n@pytest.mark.memo\n"
        f"def data():\n{inner_import}    record('data')\n    return {call}\n",
    )
    suite.write("test_it.py", TEST_SEEN)
    assert_the_edit_invalidates(suite, helper_path, edit)


def test_functions_that_call_each_other_invalidate_every_fixture_using_them(
    suite: MemoSuite,
) -> None:
    # Which fixture is keyed first must not matter: the fingerprint of a function made
    # while its caller was being fingerprinted is incomplete on its own.
    suite.write(
        "mutual.py",
        """
        def ping(n):
            return "A1" if n == 0 else pong(n - 1)


        def pong(n):
            return ping(n)
        """,
    )
    suite.write(
        "conftest.py",
        """
        from mutual import ping, pong


        @pytest.fixture
        @pytest.mark.memo
        def first():
            record("first")
            return ping(2)


        @pytest.fixture
        @pytest.mark.memo
        def second():
            record("second")
            return pong(1)
        """,
    )
    suite.write(
        "test_it.py",
        "from memo_log import record\n\n"
        "def test_both(first, second):\n    record((first, second), 'seen.txt')\n",
    )
    suite.run().assert_outcomes(passed=1)
    suite.replace("mutual.py", '"A1"', '"A9"')
    suite.run().assert_outcomes(passed=1)
    assert sorted(suite.calls()) == ["first", "first", "second", "second"]
    assert suite.seen()[-1] == "('A9', 'A9')"


def test_command_line_options_the_fixture_reads_enter_the_key(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        def pytest_addoption(parser):
            parser.addoption("--size", default="small")


        @pytest.fixture
        @pytest.mark.memo
        def data(request):
            record("data")
            return request.config.getoption("size")
        """,
    )
    suite.write("test_it.py", TEST_SEEN)
    for size in ("small", "large", "large", "small"):
        suite.run(f"--size={size}").assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]
    assert suite.seen() == ["small", "large", "large", "small"]


def test_a_fixture_calling_getfixturevalue_is_computed_not_memoized(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import os


        @pytest.fixture
        def setting():
            return os.environ["SETTING"]


        @pytest.fixture
        @pytest.mark.memo
        def data(request):
            record("data")
            return request.getfixturevalue("setting")
        """,
    )
    suite.write("test_it.py", TEST_SEEN)
    for value in ("one", "two"):
        os.environ["SETTING"] = value
        try:
            result = suite.run()
        finally:
            del os.environ["SETTING"]
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(["*'data' calls request.getfixturevalue()*not memoized*"])
    assert suite.calls() == ["data", "data"]
    assert suite.seen() == ["one", "two"]


def test_an_entry_that_no_longer_loads_is_recomputed(suite: MemoSuite) -> None:
    # Unpickling runs the value's own code, which can fail where the key sees no change
    # (here: an environment variable).
    suite.write(
        "thing.py",
        """
        import os

        BROKEN = "THING_BROKEN"  # through a name: the key does not see the variable


        class Thing:
            def __init__(self):
                self.x = 1

            def __setstate__(self, state):
                if os.environ.get(BROKEN):
                    raise RuntimeError("this Thing cannot be loaded")
                self.__dict__.update(state)
        """,
    )
    suite.write(
        "conftest.py",
        """
        from thing import Thing


        @pytest.fixture
        @pytest.mark.memo
        def data():
            record("data")
            return Thing()
        """,
    )
    suite.write("test_it.py", "def test_it(data):\n    assert data.x == 1\n")
    suite.run().assert_outcomes(passed=1)
    os.environ["THING_BROKEN"] = "1"
    try:
        broken = suite.run()
    finally:
        del os.environ["THING_BROKEN"]
    broken.assert_outcomes(passed=1, warnings=1)
    broken.stdout.fnmatch_lines(["*no longer loads (RuntimeError: this Thing cannot be loaded)*"])
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]  # the replaced entry loads again


def test_an_absolute_depends_pattern_is_a_clear_error(suite: MemoSuite) -> None:
    shared = suite.path / "shared.txt"
    shared.write_text("1")
    suite.write(
        "conftest.py",
        f"""
        @pytest.fixture
        @pytest.mark.memo(depends=[{str(shared)!r}])
        def data():
            return 1
        """,
    )
    suite.write("test_it.py", TEST_SEEN)
    result = suite.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*depends pattern * of fixture 'data' is an absolute path*"])
    assert "Traceback" not in result.stdout.str()


# Project code held in data: a table of functions, an instance, a partial, a decorated
# function, a function handed over by a dependency or as a parameter.
CODE_IN_DATA = """
import functools


def table_entry():
    return "entry one"


TABLE = {"entry": table_entry}


class Calculator:
    def compute(self):
        return 100


CALCULATOR = Calculator()


def add_one(x):
    return x + 1


ADD_TO_ELEVEN = functools.partial(add_one, 11)


def doubled(function):
    @functools.wraps(function)
    def wrapper():
        return function() * 2

    return wrapper


@doubled
def seven():
    return 7


def algorithm():
    return "first"


class Lazy:
    @functools.cached_property
    def value(self):
        return 200
"""
CODE_IN_DATA_CASES = {
    "table of functions": (
        "from code_in_data import TABLE\n\n\n"
        "@pytest.fixture\n@pytest.mark.memo\n"
        "def data():\n    record('data')\n    return TABLE['entry']()\n",
        ('"entry one"', '"entry two"'),
    ),
    "instance of a project class": (
        "from code_in_data import CALCULATOR\n\n\n"
        "@pytest.fixture\n@pytest.mark.memo\n"
        "def data():\n    record('data')\n    return CALCULATOR.compute()\n",
        ("return 100", "return 200"),
    ),
    "partial": (
        "from code_in_data import ADD_TO_ELEVEN\n\n\n"
        "@pytest.fixture\n@pytest.mark.memo\n"
        "def data():\n    record('data')\n    return ADD_TO_ELEVEN()\n",
        ("return x + 1", "return x + 2"),
    ),
    "decorator's wrapper": (
        "from code_in_data import seven\n\n\n"
        "@pytest.fixture\n@pytest.mark.memo\n"
        "def data():\n    record('data')\n    return seven()\n",
        ("function() * 2", "function() * 3"),
    ),
    "function from a dependency": (
        "import code_in_data\n\n\n"
        "@pytest.fixture\ndef chosen():\n    return code_in_data.algorithm\n\n\n"
        "@pytest.fixture\n@pytest.mark.memo\n"
        "def data(chosen):\n    record('data')\n    return chosen()\n",
        ('return "first"', 'return "second"'),
    ),
    "cached property": (
        "from code_in_data import Lazy\n\n\n"
        "@pytest.fixture\n@pytest.mark.memo\n"
        "def data():\n    record('data')\n    return Lazy().value\n",
        ("return 200", "return 300"),
    ),
    "function as a parameter": (
        "import code_in_data\n\n\n"
        "@pytest.fixture(params=[code_in_data.algorithm])\n@pytest.mark.memo\n"
        "def data(request):\n    record('data')\n    return request.param()\n",
        ('return "first"', 'return "second"'),
    ),
}


@pytest.mark.parametrize("case", CODE_IN_DATA_CASES.values(), ids=CODE_IN_DATA_CASES.keys())
def test_editing_project_code_held_in_data_invalidates(
    suite: MemoSuite, case: tuple[str, tuple[str, str]]
) -> None:
    conftest, edit = case
    suite.write("code_in_data.py", CODE_IN_DATA)
    suite.write("conftest.py", conftest)
    suite.write("test_it.py", TEST_SEEN)
    assert_the_edit_invalidates(suite, "code_in_data.py", edit)


def test_a_class_attribute_a_fixture_method_reads_enters_the_key(suite: MemoSuite) -> None:
    suite.write(
        "test_it.py",
        """
        import pytest
        from memo_log import record


        class TestScaled:
            FACTOR = 2

            @pytest.fixture(scope="class")
            @pytest.mark.memo
            def scaled(self):
                record("scaled")
                return self.FACTOR * 10

            def test_scaled(self, scaled):
                record(scaled, "seen.txt")
        """,
    )
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["scaled"]
    suite.replace("test_it.py", "FACTOR = 2", "FACTOR = 3")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["scaled", "scaled"]
    assert suite.seen() == ["20", "20", "30"]


def test_code_outside_the_rootdir_that_is_not_installed_counts_by_code(
    suite: MemoSuite,
) -> None:
    outside = suite.path.parent / f"{suite.path.name}-src"
    outside.mkdir()
    (outside / "library_code.py").write_text("def answer():\n    return 41\n")
    (suite.path / "pytest.ini").write_text(f"[pytest]\npythonpath = ../{outside.name}\n")
    suite.write(
        "conftest.py",
        """
        import library_code


        @pytest.fixture
        @pytest.mark.memo
        def data():
            record("data")
            return library_code.answer()
        """,
    )
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    suite.run().assert_outcomes(passed=1)
    (outside / "library_code.py").write_text("def answer():\n    return 42\n")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]
    assert suite.seen() == ["41", "41", "42"]
