"""Reusing a store in CI: relocation to another checkout, and --memo-prune."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from memo_suite import MemoSuite

CONFTEST = """
import pathlib

DATA_DIR = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir():
    return DATA_DIR  # an absolute path, different in every checkout


@pytest.fixture(params=[1, 2])
@pytest.mark.memo(depends=["data/*.txt"])
def numbers(request, data_dir):
    record(f"numbers{request.param}")
    text = (data_dir / "input.txt").read_text()
    return [int(x) * request.param for x in text.split()]


@pytest.fixture
@pytest.mark.memo
def other():
    record("other")
    return "other"
"""
TESTS = """
def test_numbers(numbers):
    assert len(numbers) == 3

def test_other(other):
    assert other == "other"
"""


@pytest.fixture
def project(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", CONFTEST)
    suite.write("test_it.py", TESTS)
    suite.write("data/input.txt", "1 2 3\n")
    return suite


def test_a_store_copied_to_another_checkout_hits_every_entry(
    project: MemoSuite, tmp_path: Path
) -> None:
    project.run_subprocess().assert_outcomes(passed=3)
    assert len(project.calls()) == 3
    elsewhere = tmp_path / "somewhere" / "else"
    shutil.copytree(project.path, elsewhere)
    (elsewhere / "calls.txt").unlink()
    result = project.pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rootdir", str(elsewhere), str(elsewhere)
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["memo: 3 hits*0 misses*"])
    assert not (elsewhere / "calls.txt").exists()


def test_prune_after_a_complete_run_removes_unused_entries(project: MemoSuite) -> None:
    project.run().assert_outcomes(passed=3)
    assert len(project.entries()) == 3
    project.write("test_it.py", "def test_other(other):\n    assert other\n")
    result = project.run("--memo-prune")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*; 2 unused removed (--memo-prune)"])
    assert len(project.entries()) == 1
    project.run().assert_outcomes(passed=1)
    assert project.calls().count("other") == 1  # the used entry survived


def test_prune_after_a_partial_run_keeps_entries_other_tests_use(project: MemoSuite) -> None:
    project.run().assert_outcomes(passed=3)
    result = project.run("--memo-prune", "-k", "other")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*; 0 unused removed (--memo-prune)"])
    assert len(project.entries()) == 3


def test_prune_after_a_partial_run_removes_superseded_entries(project: MemoSuite) -> None:
    project.run().assert_outcomes(passed=3)
    project.replace("conftest.py", 'return "other"', 'return "other!"')
    project.replace("test_it.py", 'assert other == "other"', 'assert other == "other!"')
    result = project.run("--memo-prune", "-k", "other")
    result.stdout.fnmatch_lines(["*; 1 unused removed (--memo-prune)"])
    assert len(project.entries()) == 3  # two numbers entries and the new "other"


def test_prune_under_xdist_keeps_what_workers_used(project: MemoSuite) -> None:
    project.run().assert_outcomes(passed=3)
    project.run_subprocess("-n", "2", "--memo-prune").assert_outcomes(passed=3)
    assert len(project.entries()) == 3
