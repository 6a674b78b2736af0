"""Every message of the process runner, and the replay events they carry, as named types.

The controller and its workers exchange these over a channel (pickled), and dispatch on
them with ``match`` statements.  They are NamedTuples: as cheap to build and pickle as
plain tuples (a run of 2000 quick tests sends about as many of each), and, being tuples,
accepted where code still expects the tuples they replace.

Controller -> worker: ``Run``, ``End``, ``Stop``.  Worker -> controller: ``Hello`` (a
spawned worker, first), then ``ItemDone`` per item, ``Exited`` or ``Interrupted`` if a
test stopped the run, ``Bye`` before a normal exit.  An ``ItemDone`` carries the item's
events, which the main process replays through its hooks (see ``replay``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pytest

__all__ = [
    "Bye",
    "End",
    "Event",
    "Exited",
    "FromWorker",
    "Hello",
    "Interrupted",
    "ItemDone",
    "LogFinish",
    "LogReport",
    "LogStart",
    "Run",
    "Stop",
    "Strayed",
    "SuiteProperty",
    "ToWorker",
    "WarningEvent",
]

Location = tuple[str, int | None, str]

# -- replay events: what serial pytest would have told its reporters ---------------------


class LogStart(NamedTuple):
    nodeid: str
    location: Location


class LogReport(NamedTuple):
    """A report: a TestReport, or in transit its serialized form; ``became_text``: its
    representation, which had no one-line crash message, travels as text."""

    report: pytest.TestReport | dict[str, Any]
    became_text: bool = False


class LogFinish(NamedTuple):
    nodeid: str
    location: Location


class WarningEvent(NamedTuple):
    """A warning; its category travels by name (``module:qualname``), picklable."""

    message: str
    category: str
    filename: str
    lineno: int
    when: str
    nodeid: str
    location: Any = None


class SuiteProperty(NamedTuple):
    """``record_testsuite_property``, for the junitxml report the main process writes."""

    name: str
    value: object


Event = LogStart | LogReport | LogFinish | WarningEvent | SuiteProperty

# -- controller -> worker ----------------------------------------------------------------


class Run(NamedTuple):
    """Append these item indices to the worker's queue."""

    indices: list[int]


class End(NamedTuple):
    """No more work: run the queue, tear everything down, say ``Bye``."""


class Stop(NamedTuple):
    """Stop once the current item is done (-x, --maxfail)."""


ToWorker = Run | End | Stop

# -- worker -> controller ----------------------------------------------------------------


class Hello(NamedTuple):
    """A spawned worker's first message: its process id, and a digest of the test ids it
    collected, which must be the main process's."""

    pid: int
    digest: str


class ItemDone(NamedTuple):
    """An item's protocol has finished; the events to replay for it.  (Items are
    ``session.items`` indices, the same in every process.)"""

    item: int
    events: list[Event]


class Exited(NamedTuple):
    """The test ``item`` called ``pytest.exit()``, which stops a serial run."""

    item: int
    reason: str
    returncode: int | None


class Interrupted(NamedTuple):
    """The test ``item`` raised KeyboardInterrupt, which stops a serial run."""

    item: int


class Bye(NamedTuple):
    """The worker is exiting normally; what plugins gave ``pytest_par_worker_finished``."""

    workeroutput: dict[str, Any]


class Strayed(NamedTuple):
    """Process ``pid``, forked by the test ``item``, returned into pytest instead of
    exiting (it sends this, and exits, before it runs anything more)."""

    item: int
    pid: int


FromWorker = ItemDone | Exited | Interrupted | Bye | Strayed


def _reduce(message: tuple[Any, ...]) -> tuple[type, tuple[Any, ...]]:
    return type(message), tuple(message)


# Pickle a message as its class and its fields: half the time of the default for a
# NamedTuple (copyreg's __newobj__ protocol), which a worker pays for every test's events.
for _message_type in (
    LogStart, LogReport, LogFinish, WarningEvent, SuiteProperty, Run, End, Stop, Hello,
    ItemDone, Exited, Interrupted, Bye, Strayed,
):  # fmt: skip
    _message_type.__reduce__ = _reduce  # type: ignore[assignment,method-assign]
