"""Thread mode's decisions on which tests run alone, and the gate that lets them."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pytest_memo.parallel.threads.gate import (
    PROCESS_STATE_FIXTURES,
    Gate,
    changes_process_state,
    marked_serial,
)
from pytest_memo.pytest_compat import DoctestItem


class FakeItem:
    def __init__(
        self, nodeid: str = "test_a.py::test_a", fixturenames: tuple[str, ...] = (), **marks: Any
    ) -> None:
        self.nodeid = nodeid
        self.fixturenames = list(fixturenames)
        self.marks = marks

    def get_closest_marker(self, name: str) -> Any:
        return self.marks.get(name)


def item(*args: Any, **kwargs: Any) -> Any:
    return FakeItem(*args, **kwargs)


@pytest.mark.parametrize("fixture", sorted(PROCESS_STATE_FIXTURES))
def test_a_test_using_a_fixture_that_changes_process_state_runs_alone(fixture: str) -> None:
    assert changes_process_state(item(fixturenames=("tmp_path", fixture)))


def test_a_test_using_other_fixtures_does_not_run_alone() -> None:
    assert not changes_process_state(item(fixturenames=("tmp_path", "request", "capture")))
    assert not changes_process_state(item())


def test_a_doctest_runs_alone() -> None:
    doctest = DoctestItem.__new__(DoctestItem)  # no fixtures of its own needed to decide
    assert changes_process_state(doctest)


def test_an_item_without_fixture_names_does_not_run_alone() -> None:
    class Bare:
        pass

    assert not changes_process_state(Bare())  # type: ignore[arg-type]


def test_the_serial_mark_or_a_par_serial_pattern_makes_a_test_run_alone() -> None:
    assert marked_serial(item(serial=pytest.mark.serial.mark), [])
    assert marked_serial(item("tests/test_db.py::test_write"), ["tests/test_db.py::*"])
    assert marked_serial(item("test_a.py::test_a[1]"), ["nothing", "*[[]1]"])
    assert not marked_serial(item("test_a.py::test_a"), ["test_b.py::*"])
    assert not marked_serial(item(), [])


def enter_in_thread(gate: Gate, alone: bool, log: list[str], name: str) -> threading.Thread:
    release = threading.Event()

    def hold() -> None:
        with gate.passed(alone):
            log.append(f"{name} in")
            release.wait(5)
            log.append(f"{name} out")

    thread = threading.Thread(target=hold, daemon=True)
    thread.release = release  # type: ignore[attr-defined]
    thread.start()
    return thread


def wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_tests_not_alone_pass_the_gate_together() -> None:
    gate, log = Gate(), []
    first = enter_in_thread(gate, False, log, "a")
    second = enter_in_thread(gate, False, log, "b")
    wait_for(lambda: sorted(log) == ["a in", "b in"])
    for thread in (first, second):
        thread.release.set()  # type: ignore[attr-defined]
        thread.join()


def test_a_test_alone_waits_for_those_running_and_keeps_others_out() -> None:
    gate, log = Gate(), []
    running = enter_in_thread(gate, False, log, "running")
    wait_for(lambda: log == ["running in"])
    alone = enter_in_thread(gate, True, log, "alone")
    time.sleep(0.05)
    assert log == ["running in"]  # the test alone waits
    running.release.set()  # type: ignore[attr-defined]
    wait_for(lambda: log == ["running in", "running out", "alone in"])
    later = enter_in_thread(gate, False, log, "later")
    time.sleep(0.05)
    assert log[-1] == "alone in"  # nothing else while it runs
    alone.release.set()  # type: ignore[attr-defined]
    wait_for(lambda: log[-2:] == ["alone out", "later in"])
    later.release.set()  # type: ignore[attr-defined]
    later.join()


def test_the_gate_is_left_when_the_block_raises() -> None:
    gate = Gate()
    with pytest.raises(RuntimeError), gate.passed(alone=True):
        raise RuntimeError
    entered = threading.Event()

    def enter_alone() -> None:
        with gate.passed(alone=True):
            entered.set()

    thread = threading.Thread(target=enter_alone, daemon=True)
    thread.start()
    thread.join(5)
    assert entered.is_set()
