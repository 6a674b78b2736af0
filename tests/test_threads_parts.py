"""Thread mode's pure parts: warnings dropped by marks, output per thread, teardown."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from pytest_memo.parallel.threads.capture import _ThreadStreams
from pytest_memo.parallel.threads.shims import _run_all
from pytest_memo.parallel.threads.warnings import ignored_by_marks


class MarkedItem:
    def __init__(self, *filters: str) -> None:
        self.marks = [pytest.mark.filterwarnings(f).mark for f in filters]

    def iter_markers(self, name: str) -> Any:
        return iter(self.marks)


def ignored(*filters: str, text: str = "boom", category: type[Warning] = UserWarning) -> bool:
    item: Any = MarkedItem(*filters)
    return ignored_by_marks(item, text, category, "/src/test_mod.py", 7)


def test_an_ignore_mark_that_matches_drops_the_warning() -> None:
    assert ignored("ignore:boom")
    assert ignored("ignore::UserWarning")
    assert ignored("ignore:BOOM")  # messages match ignoring case, as in Python's filters
    assert ignored("ignore::UserWarning:test_mod")
    assert ignored("ignore::UserWarning:test_mod:7")


def test_a_mark_that_does_not_match_keeps_the_warning() -> None:
    assert not ignored()
    assert not ignored("ignore:other")
    assert not ignored("ignore::DeprecationWarning")
    assert not ignored("ignore::UserWarning:other_mod")
    assert not ignored("ignore::UserWarning:test_mod:8")


def test_only_ignore_drops_a_warning() -> None:
    assert not ignored("error:boom")
    assert not ignored("always:boom")


def test_marks_are_stacked_as_pytest_applies_them() -> None:
    # pytest applies each filter in front of the ones before: the last one wins.
    assert ignored("default:boom", "ignore:boom")
    assert not ignored("ignore:boom", "default:boom")


def test_each_thread_writes_to_its_own_buffer() -> None:
    original, local = io.StringIO(), threading.local()
    stream: Any = _ThreadStreams(original, local, "out")
    buffers = {}

    def write(name: str) -> None:
        local.out = buffers[name] = io.StringIO()
        stream.write(name)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stream.write("main")  # no buffer in this thread: the original stream
    assert {name: buffer.getvalue() for name, buffer in buffers.items()} == {"a": "a", "b": "b"}
    assert original.getvalue() == "main"
    assert stream.getvalue() == "main"  # everything else is the original stream's


def test_every_finalizer_runs_though_some_fail() -> None:
    ran = []

    def fails(name: str) -> Any:
        def finalizer() -> None:
            ran.append(name)
            raise ValueError(name)

        return finalizer

    errors = _run_all([fails("a"), lambda: ran.append("b"), fails("c")])
    assert ran == ["a", "b", "c"]
    assert [str(error) for error in errors] == ["a", "c"]
