"""pytest hooks that record test durations and split a suite with ``--shard=I/N``.

Not part of the parallel runner: sharding splits a suite across CI jobs, and durations
recorded here also order the runner's long tests first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

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
        "of earlier runs (kept in pytest's cache), e.g. --shard=2/4 in CI job 2 of 4",
    )


class DurationRecorder:
    """Adds up each test's setup, call and teardown time; saves it in pytest's cache.

    It runs where reports are seen: the main process of a serial run, and the main process
    of --par and pytest-xdist runs, which receive every worker's reports.  Durations live
    in ``.pytest_cache/d/pytest_memo/`` (pytest's ``config.cache``): ``--cache-clear``
    clears them, and with ``-p no:cacheprovider`` they are not kept at all.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.cache = getattr(config, "cache", None)
        self.previous = durations.load(self.directory) if self._exists() else {}
        self.measured: dict[str, float] = {}

    @property
    def directory(self) -> Path:
        assert self.cache is not None
        directory: Path = self.cache.mkdir(DIRECTORY)
        return directory

    def _exists(self) -> bool:
        # Only look: loading must not create pytest's cache directory (a private attribute
        # of pytest's Cache; without it, the directory is made: it is pytest's own cache).
        if self.cache is None:
            return False
        root = getattr(self.cache, "_cachedir", None)
        return not isinstance(root, Path) or (root / "d" / DIRECTORY).is_dir()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.measured[report.nodeid] = self.measured.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        config = session.config
        if self.cache is None or hasattr(config, "workerinput"):
            return  # no pytest cache; workers report to the main process
        if config.getoption("memo_read_only", False) or _ini_flag(config, "memo_read_only"):
            return  # --memo-read-only: a job that uses caches and writes none
        # Every shard of a CI run must compute the same split from the same file, even if
        # one shard finishes before another starts: sharded runs never change it.
        text = config.getoption("shard")
        name = f"durations-shard-{text.replace('/', '-of-')}.json" if text else None
        with contextlib.suppress(OSError):  # a read-only cache: durations are a nicety
            durations.save(self.directory, self.measured, name)


DURATIONS = pytest.StashKey[DurationRecorder]()
# The directory of pytest's cache (``config.cache.mkdir``) that holds the durations.
DIRECTORY = "pytest_memo"


def recorded_durations(config: pytest.Config) -> dict[str, float]:
    """Seconds per node id from earlier runs (empty before the first)."""
    recorder = config.stash.get(DURATIONS, None)
    return recorder.previous if recorder is not None else {}


def _ini_flag(config: pytest.Config, name: str) -> bool:
    try:
        return bool(config.getini(name))
    except ValueError:  # the memo plugin is disabled
        return False


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("shard"):
        try:
            parse_shard(config.getoption("shard"))
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
    recorder = DurationRecorder(config)
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
