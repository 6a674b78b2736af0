"""The runner's messages and replay events: each survives pickling and a real pipe."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from pytest_memo.parallel import protocol
from pytest_memo.parallel.channel import pipe
from pytest_memo.parallel.replay import item_events, warning_event

LOCATION = ("test_a.py", 3, "test_one")

EVENTS: list[protocol.Event] = [
    protocol.LogStart("test_a.py::test_one", LOCATION),
    protocol.LogReport({"nodeid": "test_a.py::test_one", "outcome": "failed"}, True),
    protocol.LogFinish("test_a.py::test_one", LOCATION),
    protocol.WarningEvent(
        "careful", "builtins:UserWarning", "test_a.py", 4, "runtest", "test_a.py::test_one"
    ),
    protocol.SuiteProperty("build", 42),
]

MESSAGES: list[Any] = [
    protocol.Run([0, 5, 2]),
    protocol.End(),
    protocol.Stop(),
    protocol.Hello(1234, "ab" * 32),
    protocol.ItemDone(7, EVENTS),
    protocol.Exited(3, "enough", 4),
    protocol.Exited(3, "enough", None),
    protocol.Interrupted(9),
    protocol.Bye({"pytest_memo": {"computed": 1}}),
    protocol.Bye({}),
    *EVENTS,
]


def _same(received: Any, sent: Any) -> None:
    assert type(received) is type(sent)  # End() == Stop(): both are empty tuples
    assert received == sent


@pytest.mark.parametrize("message", MESSAGES, ids=lambda message: type(message).__name__)
def test_message_round_trips_through_pickle(message: Any) -> None:
    for version in range(2, pickle.HIGHEST_PROTOCOL + 1):
        _same(pickle.loads(pickle.dumps(message, protocol=version)), message)


def test_messages_round_trip_through_a_pipe_in_order() -> None:
    reading, writing = pipe()
    try:
        for message in MESSAGES:
            writing.send(message)
        for message in MESSAGES:
            assert reading.poll()
            _same(reading.recv(), message)
        assert not reading.poll()
    finally:
        reading.close()
        writing.close()


def test_a_large_message_round_trips_through_a_pipe() -> None:
    """Larger than a pipe's buffer: sent in parts while the other end reads."""
    import threading

    message = protocol.ItemDone(1, [protocol.SuiteProperty("big", "x" * 1_000_000)])
    reading, writing = pipe()
    sender = threading.Thread(target=writing.send, args=(message,))
    sender.start()
    try:
        _same(reading.recv(), message)
    finally:
        sender.join()
        reading.close()
        writing.close()


def test_controller_and_worker_message_kinds_are_distinct() -> None:
    """Class patterns tell the messages apart, so no two share a class."""
    kinds = [protocol.Run, protocol.End, protocol.Stop]
    kinds += [protocol.Hello, protocol.ItemDone, protocol.Exited, protocol.Interrupted]
    kinds += [protocol.Bye]
    assert len(set(kinds)) == len(kinds)
    for kind in kinds:
        assert not any(issubclass(kind, other) for other in kinds if other is not kind)


def test_warning_event_names_the_category_for_the_other_side() -> None:
    event = warning_event(
        DeprecationWarning("old"), DeprecationWarning, "a.py", 1, "runtest", "a.py::t"
    )
    assert event == protocol.WarningEvent(
        "old", "builtins:DeprecationWarning", "a.py", 1, "runtest", "a.py::t", None
    )
    _same(pickle.loads(pickle.dumps(event)), event)


def test_item_events_frame_the_reports(pytester: pytest.Pytester) -> None:
    item = pytester.getitem("def test_func(): pass")
    report = pytest.TestReport(item.nodeid, item.location, {}, "passed", None, "call")
    events = item_events(item, [report])
    assert [type(event) for event in events] == [
        protocol.LogStart,
        protocol.LogReport,
        protocol.LogFinish,
    ]
    assert events[1] == protocol.LogReport(report, False)
    assert events[0].nodeid == events[2].nodeid == item.nodeid
