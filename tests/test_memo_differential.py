"""The promise, tested differentially (issue #13): after any sequence of edits to a project,
a run that uses the store gives exactly the values a ``--memo-off`` run gives.

Hypothesis draws a project (constants, a helper's code, a class attribute, a fixture's
``params``, a dict's order, a list, a docstring, the values a fixture sets on a module
during the run) and a few edits to it.  After every edit the project runs twice in a
subprocess, with one store shared by all the examples and with ``--memo-off``; every test
writes what it saw, and the two records must be equal.  Small value ranges make states
recur, so entries stored by earlier steps and examples are loaded again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

HELPERS = """
import pytest_memo

FACTOR = {factor}
ITEMS = {items!r}
COLUMNS = {columns}
MODE = "base"


def scale(x):
    {docstring}
    return x * FACTOR + {offset}


class Shape:
    SIDES = {sides}

    def perimeter(self, length):
        return self.SIDES * length


def nothing():
    {docstring}
    return None


@pytest_memo.cache
def total(values):
    return sum(values) * FACTOR + len(MODE)
"""

CONFTEST = """
import pytest
import helpers


@pytest.fixture(params={modes!r})
def mode(request):
    helpers.MODE = request.param
    yield request.param
    helpers.MODE = "base"


@pytest.fixture(scope="session")
@pytest.mark.memo
def table():
    columns, items = list(helpers.COLUMNS), list(helpers.ITEMS)
    return {{"columns": columns, "items": items, "none": helpers.nothing()}}


@pytest.fixture(params={params!r})
@pytest.mark.memo
def scaled(request):
    return helpers.scale(request.param)


@pytest.fixture
@pytest.mark.memo(ignore=["mode"])
def moded(mode):
    # Reads what the ``mode`` fixture set on the module, not the value it returned.
    return (helpers.MODE, helpers.Shape().perimeter(helpers.FACTOR))


@pytest.fixture
@pytest.mark.memo
def items_now():
    return list(helpers.ITEMS)
"""

TESTS = """
import helpers


def see(request, value):
    with open("values.txt", "a") as file:
        file.write(f"{request.node.nodeid} {value!r}\\n")


def test_table(table, request):
    see(request, table)


def test_scaled(scaled, request):
    see(request, scaled)


def test_moded(moded, request):
    see(request, moded)


def test_cached(mode, request):
    see(request, helpers.total(tuple(helpers.ITEMS)))


def test_append(request):
    helpers.ITEMS.append(len(helpers.ITEMS))  # changes the module's data for later tests
    see(request, None)


def test_after_append(items_now, request):
    see(request, items_now)
"""

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "factor": st.integers(1, 3),
    "offset": st.integers(0, 2),
    "sides": st.integers(3, 4),
    "items": st.lists(st.integers(0, 2), max_size=2),
    "columns": st.permutations(["a", "b", "c"]),
    "modes": st.lists(st.sampled_from(["x", "yy"]), min_size=1, max_size=2, unique=True),
    "params": st.lists(st.integers(0, 2), min_size=1, max_size=2, unique=True),
    "docstring": st.booleans(),
}
projects = st.fixed_dictionaries(FIELDS)
edits = st.one_of(*(st.tuples(st.just(name), field) for name, field in FIELDS.items()))


def write_project(directory: Path, state: dict[str, Any]) -> None:
    columns = "{" + ", ".join(f"{name!r}: {i}" for i, name in enumerate(state["columns"])) + "}"
    docstring = '"""Documented."""' if state["docstring"] else "pass"
    helpers = HELPERS.format(**{**state, "columns": columns, "docstring": docstring})
    (directory / "helpers.py").write_text(helpers)
    (directory / "conftest.py").write_text(CONFTEST.format(**state))
    (directory / "test_it.py").write_text(TESTS)
    (directory / "pytest.ini").write_text("[pytest]\n")


def values(directory: Path, *args: str) -> list[str]:
    record = directory / "values.txt"
    record.unlink(missing_ok=True)
    # Only the plugin under test: a run starts in half the time.
    plugins = ["-p", "no:cacheprovider", "-p", "pytest_memo.memoize.plugin"]
    command = [sys.executable, "-m", "pytest", "-q", *plugins]
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    environment["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    for name in ("PYTEST_ADDOPTS", "PYTEST_MEMO_DIR", "PYTEST_XDIST_WORKER"):
        environment.pop(name, None)
    result = subprocess.run(
        [*command, *args], cwd=directory, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return record.read_text().splitlines()


# What --memo-off runs gave, by project state: each state needs running once only.
PLAIN: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for all examples: a state met again loads what an earlier one stored."""
    return tmp_path_factory.mktemp("differential") / "store"


@settings(max_examples=8, deadline=None)
@given(start=projects, changes=st.lists(edits, min_size=1, max_size=2))
def test_a_memoized_run_gives_the_values_of_a_run_without_memo(
    store: Path, start: dict[str, Any], changes: list[tuple[str, Any]]
) -> None:
    state = dict(start)
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        for change in [None, *changes]:
            if change is not None:
                state[change[0]] = change[1]
            write_project(directory, state)
            memoized = values(directory, f"--memo-dir={store}")
            known = PLAIN.get(repr(state))
            plain = values(directory, "--memo-off") if known is None else known
            PLAIN[repr(state)] = plain
            assert memoized == plain, f"after {change} in {state}"
