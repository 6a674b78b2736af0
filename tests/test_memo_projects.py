"""Projects sharing one store (an absolute --memo-dir): --memo-prune removes only what the
pruning project stored and did not use, and "invalidated" counts only its own slots.
Two checkouts of one project (the same pyproject.toml name, anywhere) are one project."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest
from memo_suite import SPEED_FLAGS

CONFTEST = """
import pytest

def record(line):
    with open("calls.txt", "a") as log:
        log.write(line + "\\n")

@pytest.fixture
@pytest.mark.memo
def data():  # the same slot name in both projects, other code
    record("data")
    return "{name}"

@pytest.fixture
@pytest.mark.memo
def only_{name}():
    record("only")
    return "{name}!"
"""
TESTS = """
def test_data(data):
    assert data == "{name}"

def test_only(only_{name}):
    assert only_{name} == "{name}!"
"""
SUMMARY = re.compile(r"^memo: (\d+) hits? .*, (\d+) miss(?:es)? .*, (\d+) invalidated", re.M)


def make(directory: Path, name: str, project: str | None = None) -> Path:
    directory.mkdir(parents=True)
    pyproject = f'[project]\nname = "{project or name}"\nversion = "1"\n\n'
    (directory / "pyproject.toml").write_text(pyproject + "[tool.pytest.ini_options]\n")
    (directory / "conftest.py").write_text(textwrap.dedent(CONFTEST.format(name=name)))
    (directory / "test_it.py").write_text(textwrap.dedent(TESTS.format(name=name)))
    return directory


def run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, project: Path, *args: str
) -> tuple[pytest.RunResult, tuple[int, int, int]]:
    monkeypatch.chdir(project)  # a complete run: no paths on the command line
    store = pytester.path / "shared-store"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", *SPEED_FLAGS, f"--memo-dir={store}", *args
    )
    result.assert_outcomes(passed=2)
    hits, misses, invalidated = SUMMARY.findall(result.stdout.str())[0]
    return result, (int(hits), int(misses), int(invalidated))


def calls(project: Path) -> list[str]:
    log = project / "calls.txt"
    calls = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_prune_keeps_the_entries_of_another_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = make(pytester.path / "alpha", "alpha")
    beta = make(pytester.path / "beta", "beta")
    assert run(pytester, monkeypatch, alpha)[1] == (0, 2, 0)
    # beta's "data" fills a slot of the same name as alpha's: not an invalidation
    assert run(pytester, monkeypatch, beta)[1] == (0, 2, 0)
    result, counted = run(pytester, monkeypatch, alpha, "--memo-prune")
    assert counted == (2, 0, 0)
    result.stdout.fnmatch_lines(["*; 0 unused removed (--memo-prune)"])
    result, counted = run(pytester, monkeypatch, beta, "--memo-prune")
    assert counted == (2, 0, 0)
    result.stdout.fnmatch_lines(["*; 0 unused removed (--memo-prune)"])
    calls(alpha)
    assert run(pytester, monkeypatch, alpha)[1] == (2, 0, 0) and calls(alpha) == []


def test_two_checkouts_of_one_project_prune_each_others_superseded_entries(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha = make(pytester.path / "alpha", "alpha")
    beta = make(pytester.path / "beta", "beta")
    run(pytester, monkeypatch, alpha)
    run(pytester, monkeypatch, beta)
    # Another checkout of alpha, in a directory of another name, with an edited fixture.
    checkout = pytester.path / "ci-build-1234"
    shutil.copytree(alpha, checkout)
    conftest = checkout / "conftest.py"
    conftest.write_text(conftest.read_text().replace('record("only")', 'record(f"only{1}")'))
    result, counted = run(pytester, monkeypatch, checkout, "--memo-prune")
    assert counted == (1, 1, 1)  # its own slot, filled under a new key: invalidated
    result.stdout.fnmatch_lines(["*; 1 unused removed (--memo-prune)"])  # alpha's old one
    assert run(pytester, monkeypatch, beta)[1] == (2, 0, 0)
    assert run(pytester, monkeypatch, alpha)[1] == (1, 1, 1)  # its old entry went


def test_memo_project_names_the_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two branches of one project sharing a store, each named: neither prunes the other.
    main = make(pytester.path / "main", "alpha")
    branch = make(pytester.path / "branch", "beta", project="alpha")
    run(pytester, monkeypatch, main, "-o", "memo_project=alpha-main")
    run(pytester, monkeypatch, branch, "-o", "memo_project=alpha-branch")
    result, _ = run(pytester, monkeypatch, main, "-o", "memo_project=alpha-main", "--memo-prune")
    result.stdout.fnmatch_lines(["*; 0 unused removed (--memo-prune)"])
    assert run(pytester, monkeypatch, branch, "-o", "memo_project=alpha-branch")[1] == (2, 0, 0)


def test_an_index_and_entries_of_the_previous_version_are_kept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    import pytest_memo

    alpha = make(pytester.path / "alpha", "alpha")
    run(pytester, monkeypatch, alpha)
    store = pytester.path / "shared-store"
    # Rewrite one entry as the previous version wrote it (no project in its info) ...
    entry = sorted(store.glob("v1/entries/*/*.memo"))[0]
    info, value = pytest_memo.load(entry)
    del info["project"]
    pytest_memo.dump((info, value), entry)
    # ... and the index as it was: no project column, user_version 1.
    with sqlite3.connect(store / "v1/index.sqlite") as index:
        index.execute("ALTER TABLE entries DROP COLUMN project")
        index.execute("PRAGMA user_version = 1")
    index.close()
    _, counted = run(pytester, monkeypatch, alpha, "-W", "error::UserWarning")
    assert counted == (2, 0, 0)
    show = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--memo-dir={store}", "--memo-show"
    )
    show.stdout.fnmatch_lines(["*data*", "*only_alpha*"])
    assert "Warning" not in show.stdout.str()
