"""pytest hooks that record test durations and split a suite with ``--shard=I/N``.

Not part of the parallel runner: sharding splits a suite across CI jobs, and durations
recorded here also order the runner's long tests first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from pytest_memo.store.location import LAYOUT, local_directory
from pytest_memo.timing import durations
from pytest_memo.timing.shard import parse_shard, shard

__all__ = ["recorded_durations"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("par", "parallel runner (pytest-memo)")
    group.addoption(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only the I-th of N disjoint parts of the suite, balanced by the durations "
        "of earlier runs (kept in the memo store), e.g. --shard=2/4 in CI job 2 of 4",
    )


class DurationRecorder:
    """Adds up each test's setup, call and teardown time; saves it with the memo store.

    It runs where reports are seen: the main process of a serial run, and the main process
    of --par and pytest-xdist runs, which receive every worker's reports.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.previous = durations.load(directory)
        self.measured: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.measured[report.nodeid] = self.measured.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = session.config
        if hasattr(config, "workerinput") or config.getoption("memo_off", False):
            return  # workers report to the main process; --memo-off touches no store
        # Every shard of a CI run must compute the same split from the same file, even if
        # one shard finishes before another starts: sharded runs never change it.
        text = config.getoption("shard")
        name = f"durations-shard-{text.replace('/', '-of-')}.json" if text else None
        with contextlib.suppress(OSError):  # a read-only store: durations are a nicety
            durations.save(self.directory, self.measured, name)


DURATIONS = pytest.StashKey[DurationRecorder]()


def recorded_durations(config: pytest.Config) -> dict[str, float]:
    """Seconds per node id from earlier runs (empty before the first)."""
    recorder = config.stash.get(DURATIONS, None)
    return recorder.previous if recorder is not None else {}


def _durations_directory(config: pytest.Config) -> Path:
    """The memo store's directory (its local cache, for a remote store)."""
    location = config.getoption("memo_dir", None)
    with contextlib.suppress(ValueError):  # the memo plugin may be disabled
        location = location or config.getini("memo_dir")
    return local_directory(config.rootpath, location) / LAYOUT


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("shard"):
        try:
            parse_shard(config.getoption("shard"))
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
    recorder = DurationRecorder(_durations_directory(config))
    config.stash[DURATIONS] = recorder
    config.pluginmanager.register(recorder, "pytest_memo.durations")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    text = config.getoption("shard")
    if not text:
        return
    index, count = parse_shard(text)
    chosen = shard([item.nodeid for item in items], recorded_durations(config), index, count)
    selected = [item for item in items if item.nodeid in chosen]
    deselected = [item for item in items if item.nodeid not in chosen]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
