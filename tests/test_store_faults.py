"""Faults injected into a store, and the store healing itself: a damaged index, a damaged
layout, things that are not files where entries and locks belong, writers killed halfway,
entries rewritten under a running test.  Each fault is made with real files and real
processes, and checked end to end through pytest runs."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from memo_suite import SPEED_FLAGS, MemoSuite

from pytest_memo.core.files import STALE_SECONDS
from pytest_memo.core.serialize import dump
from pytest_memo.store.local import EntryInfo, Store, StoreRepairWarning

PAIR = """
@pytest.fixture
@pytest.mark.memo
def first():
    record("first")
    return {"first": list(range(100))}


@pytest.fixture
@pytest.mark.memo
def second():
    record("second")
    return {"second": "x" * 1000}
"""
TEST_PAIR = """
def test_first(first):
    assert first == {"first": list(range(100))}


def test_second(second):
    assert second == {"second": "x" * 1000}
"""
SUMMARY = re.compile(r"^memo: (\d+) hits? .*, (\d+) miss(?:es)? ", re.MULTILINE)


def counts(result: pytest.RunResult) -> tuple[int, int]:
    found = SUMMARY.findall(result.stdout.str())
    assert len(found) == 1, result.stdout.str()
    return int(found[0][0]), int(found[0][1])


@pytest.fixture
def pair(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", PAIR)
    suite.write("test_it.py", TEST_PAIR)
    result = suite.run()
    result.assert_outcomes(passed=2)
    assert counts(result) == (0, 2)
    return suite


def store(suite: MemoSuite) -> Path:
    return suite.path / ".pytest_memo" / "v1"


# -- a damaged index -----------------------------------------------------------------------


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for at in range(16, len(data), 97):  # the header, the page headers, the cells
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def foreign_schema(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE entries (name TEXT, value BLOB)")
        connection.execute("CREATE TABLE settings (name TEXT)")
    connection.close()


def directory_in_place(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "something").write_text("not ours to lose\n")


INDEX_DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped bytes": flip_bytes,
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3]),
    "zeroed": lambda path: path.write_bytes(bytes(len(path.read_bytes()))),
    "junk text": lambda path: path.write_text("this is not a database\n" * 200),
    "foreign schema": foreign_schema,
    "a directory": directory_in_place,
}


def damage_index(suite: MemoSuite, damage: Callable[[Path], None]) -> None:
    index = store(suite) / "index.sqlite"
    assert index.is_file() and not Path(f"{index}-wal").exists()
    damage(index)


@pytest.mark.parametrize("damage", INDEX_DAMAGE.values(), ids=INDEX_DAMAGE.keys())
def test_a_damaged_index_is_rebuilt_from_the_entries(
    pair: MemoSuite, damage: Callable[[Path], None]
) -> None:
    damage_index(pair, damage)
    warm = pair.run()
    warm.assert_outcomes(passed=2, warnings=1)
    warm.stdout.fnmatch_lines(["*StoreRepairWarning: pytest-memo: the store index*was damaged*"])
    assert counts(warm) == (2, 0)  # the truth: both hits, nothing computed
    assert pair.calls() == ["first", "second"]
    again = pair.run()
    again.assert_outcomes(passed=2)  # repaired for good: no warning
    assert counts(again) == (2, 0)

    damage_index(pair, damage)
    shown = pair.run("--memo-show")
    assert shown.ret == 0, shown.stdout.str()
    assert "INTERNALERROR" not in shown.stdout.str() + shown.stderr.str()
    shown.stdout.fnmatch_lines_random(["*first*", "*second*"])

    damage_index(pair, damage)
    cleared = pair.run("--memo-clear")
    cleared.assert_outcomes(passed=2)
    assert counts(cleared) == (0, 2)
    assert pair.calls() == ["first", "second"] * 2
    assert len(pair.entries()) == 2
    assert not list(store(pair).glob("index.sqlite.*")) or damage is directory_in_place


def test_a_deleted_index_is_refilled_without_a_warning(pair: MemoSuite) -> None:
    (store(pair) / "index.sqlite").unlink()
    shown = pair.run("--memo-show")
    shown.stdout.fnmatch_lines_random(["*first*", "*second*"])
    assert "Warning" not in shown.stdout.str() + shown.stderr.str()
    warm = pair.run()
    warm.assert_outcomes(passed=2)
    assert counts(warm) == (2, 0)


def test_the_index_is_rebuilt_without_unpickling_an_entry(pair: MemoSuite) -> None:
    """Rebuilding reads the entries' metadata from the pickle opcodes: an entry whose value
    would run code when unpickled is listed, and nothing runs."""
    pair.write(
        "conftest.py",
        PAIR
        + textwrap.dedent(
            """
            class Loud:
                def __reduce__(self):
                    return (record, ("unpickled",))


            @pytest.fixture
            @pytest.mark.memo
            def loud():
                return Loud()
            """
        ),
    )
    pair.write("test_loud.py", "def test_loud(loud):\n    pass\n")
    pair.run("test_loud.py").assert_outcomes(passed=1)
    assert pair.calls() == ["first", "second"]
    damage_index(pair, INDEX_DAMAGE["junk text"])
    shown = pair.run("--memo-show")
    shown.stdout.fnmatch_lines_random(["*first*", "*second*", "*loud*"])
    assert pair.calls() == ["first", "second"]


def test_a_rebuilt_index_lists_each_entry_as_it_was_written(tmp_path: Path) -> None:
    """The entries' metadata read from their pickle opcodes: long strings (a length of 4
    bytes), repeated strings (pickled once, then fetched from the memo), numbers of every
    size, the metadata of an older version without the newer fields; an entry whose
    stream holds no metadata is left out, not fatal."""
    infos = {
        "a" * 32: EntryInfo("plain", "conftest.py", "plain", 0.25, 1_700_000_000.5),
        "b" * 32: EntryInfo("x" * 300, "src/" + "é" * 200, "slot", 12345.0, -1.0, "r", "p"),
        "c" * 32: EntryInfo("same", "same", "same", 0.0, 3.0, "same", "same"),
    }
    store = Store(tmp_path)
    store.prepare()
    for key, info in infos.items():
        store.write(key, info, {"value": list(range(300))})
    old = {"fixture": "old", "source": "o.py", "slot": "old", "seconds": 7, "created": 2.0}
    for key, written in (("d" * 32, (old, 1)), ("e" * 32, ("not an info", 1))):
        store.entry_path(key).parent.mkdir()
        dump(written, store.entry_path(key))
    store.close()
    (tmp_path / "v1" / "index.sqlite").write_text("damaged\n")
    with pytest.warns(StoreRepairWarning, match="rebuilt it from the entry files"):
        listed = {row.key: row for row in Store(tmp_path).listing()}
    assert sorted(listed) == ["a" * 32, "b" * 32, "c" * 32, "d" * 32]
    for key, info in infos.items():
        row = listed[key]
        assert (row.fixture, row.source, row.slot) == (info.fixture, info.source, info.slot)
        assert (row.created, row.seconds, row.project) == (info.created, info.seconds, info.project)
    assert (listed["d" * 32].fixture, listed["d" * 32].seconds) == ("old", 7)


# -- damaged layout ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v1", "v1/entries", "v1/locks"])
def test_a_file_where_a_directory_belongs_is_moved_aside(pair: MemoSuite, name: str) -> None:
    directory = pair.path / ".pytest_memo" / name
    if directory.name == "v1":
        import shutil

        shutil.rmtree(directory)
    else:
        import shutil

        shutil.rmtree(directory)
    directory.write_text("in the way\n")
    result = pair.run()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*StoreRepairWarning*{directory}*moved it aside*"])
    again = pair.run()
    again.assert_outcomes(passed=2)
    assert "Warning" not in again.stdout.str()
    assert counts(again) == (2, 0)
    (aside,) = directory.parent.glob(f"{directory.name}.moved-aside-*")
    assert aside.read_text() == "in the way\n"  # nothing of the user's is lost


def test_a_directory_where_an_entry_belongs_is_replaced(pair: MemoSuite) -> None:
    entry = pair.entries()[0]
    entry.unlink()
    entry.mkdir()
    result = pair.run()
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*a directory in the place of an entry*"])
    assert counts(result) == (1, 1)
    again = pair.run()
    again.assert_outcomes(passed=2)
    assert counts(again) == (2, 0)
    assert entry.is_file()


def test_a_file_where_an_entry_directory_belongs_is_replaced(pair: MemoSuite) -> None:
    entry = pair.entries()[0]
    for item in entry.parent.iterdir():
        item.unlink()
    entry.parent.rmdir()
    entry.parent.write_text("in the way\n")
    result = pair.run()
    result.assert_outcomes(passed=2)
    assert counts(result) == (1, 1)
    again = pair.run()
    again.assert_outcomes(passed=2)
    assert counts(again) == (2, 0)


@pytest.mark.parametrize("suffix", [".memo", ".sig"])
def test_a_fifo_where_an_entry_belongs_never_blocks(
    pair: MemoSuite, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    if suffix == ".sig":
        monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
        pair.run("--memo-clear").assert_outcomes(passed=2)
    entry = pair.entries()[0].with_suffix(suffix)
    entry.unlink()
    os.mkfifo(entry)
    # In a subprocess with a timeout: the old code blocks forever in open().
    result = pair.run_subprocess(timeout=60)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*FIFO (named pipe) in the place of a*"])
    again = pair.run()
    again.assert_outcomes(passed=2)
    assert counts(again) == (2, 0)
    assert entry.is_file()


# -- writers killed mid-write --------------------------------------------------------------

KILLED_WRITER = """
import os, signal, sys
import pytest_memo.core.serialize as serialize

# Killed in the middle of writing the value: after some bytes are in the temporary file.
write = serialize._Writer.section
def section(self, *args):
    write(self, *args)
    self.file.flush()
    if os.environ.get("KILL_WRITER"):
        os.kill(os.getpid(), signal.SIGKILL)
serialize._Writer.section = section

@pytest.fixture
@pytest.mark.memo
def big():
    record("big")
    return bytes(3_000_000)
"""


def temporary_files(suite: MemoSuite) -> list[Path]:
    return sorted(p for p in (suite.path / ".pytest_memo").rglob("*.tmp"))


def test_temporary_files_of_killed_writers_are_removed_and_counted(suite: MemoSuite) -> None:
    suite.write("conftest.py", KILLED_WRITER)
    suite.write("test_it.py", "def test_big(big):\n    assert len(big) == 3_000_000\n")
    for _ in range(2):
        process = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *SPEED_FLAGS],
            cwd=suite.path,
            env={**os.environ, "KILL_WRITER": "1"},
            capture_output=True,
        )
        assert process.returncode == -signal.SIGKILL
        # Each run removes what the killed runs before it left: one is left at a time.
        (leftover,) = temporary_files(suite)
        assert leftover.stat().st_size > 1_000_000

    result = suite.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*StoreRepairWarning: pytest-memo: removed 1 temporary file (* MB) left by a writer*"]
    )
    assert temporary_files(suite) == []
    assert len(suite.entries()) == 1
    assert counts(suite.run()) == (1, 0)


LIVE_WRITER = """
import os, sys, time
from pathlib import Path
from pytest_memo.core.files import temporary_in

directory = Path(sys.argv[1])
directory.mkdir(parents=True, exist_ok=True)
handle, name = temporary_in(directory, "abc")
os.write(handle, bytes(2_000_000))
print(name, flush=True)
time.sleep(600)
"""


def test_a_live_writers_temporary_file_is_kept_and_counted(suite: MemoSuite) -> None:
    suite.write("conftest.py", PAIR)
    suite.write("test_it.py", TEST_PAIR)
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(suite.path / ".pytest_memo/v1/tmp")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        temporary = Path(writer.stdout.readline().strip())
        result = suite.run("--memo-prune", "--memo-max-size=1MB")
        result.assert_outcomes(passed=2)
        assert temporary.exists()  # its writer is still writing it
        result.stdout.fnmatch_lines(["*store 2.0 MB in .pytest_memo*"])  # and it counts
        # a writer on another host: left alone until it is a day old
        foreign = temporary.with_name("abd.elsewhere.1.xyz.tmp")
        foreign.write_bytes(b"x")
        suite.run("--memo-prune").assert_outcomes(passed=2)
        assert foreign.exists()
        old = time.time() - STALE_SECONDS - 60
        os.utime(foreign, (old, old))
        suite.run("--memo-prune").assert_outcomes(passed=2)
        assert not foreign.exists()
    finally:
        writer.kill()
        writer.wait()
    suite.run().assert_outcomes(passed=2)
    assert not temporary.exists()  # the writer is gone: removed on the next run


# -- lock files ----------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_linked_lock_file_never_touches_its_target(suite: MemoSuite, link: str) -> None:
    suite.write("conftest.py", PAIR)
    suite.write("test_it.py", TEST_PAIR)
    victim = suite.path / "victim.txt"
    victim.write_text("precious\n")
    # The lock files the run will take: one per key, found from a first run's entries.
    suite.run().assert_outcomes(passed=2)
    keys = [entry.stem for entry in suite.entries()]
    for entry in suite.entries():
        entry.unlink()
    locks = store(suite) / "locks"
    for key in keys:
        lock = locks / f"{key}.lock"
        lock.unlink(missing_ok=True)
        if link == "symbolic":
            lock.symlink_to(victim)
        else:
            os.link(victim, lock)
    result = suite.run()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*the lock file*was a*{link}*link*removed it*"])
    assert victim.read_text() == "precious\n"
    assert counts(result) == (0, 2)
    assert len(suite.entries()) == 2  # stored: the store was not given up
    assert counts(suite.run()) == (2, 0)


# -- entries rewritten in place under a running process -------------------------------------

IN_PLACE_FIXTURE = """
@pytest.fixture
@pytest.mark.memo(mmap=MMAP)
def data():
    record("data")
    return {"answer": 42}
"""
IN_PLACE = """
import os
from pathlib import Path

import pytest_memo
from memo_log import record


def forge_in_place():
    # Same inode, same modification time: rewritten in place.
    (entry,) = Path(".pytest_memo/v1/entries").glob("*/*.memo")
    status = entry.stat()
    info, _ = pytest_memo.load(entry)
    pytest_memo.dump((info, {"answer": 43}), "forged.memo")
    forged = Path("forged.memo").read_bytes()
    with open(entry, "r+b") as file:
        file.write(forged)
        file.truncate()
    os.utime(entry, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert entry.stat().st_ino == status.st_ino


def test_1(data):
    assert data == {"answer": 42}
    forge_in_place()


def test_2(data):
    record(repr(data), "seen.txt")
"""


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_an_entry_rewritten_in_place_mid_run_is_not_served(
    suite: MemoSuite, monkeypatch: pytest.MonkeyPatch, mmap: bool
) -> None:
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    suite.write("conftest.py", IN_PLACE_FIXTURE.replace("MMAP", str(mmap)))
    suite.write("test_it.py", IN_PLACE)
    suite.write("test_first.py", "def test_0(data):\n    pass\n")
    suite.run("test_first.py").assert_outcomes(passed=1)  # stored and signed
    result = suite.run("test_it.py")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*signature does not match PYTEST_MEMO_SECRET*"])
    assert suite.seen() == ["{'answer': 42}"]
