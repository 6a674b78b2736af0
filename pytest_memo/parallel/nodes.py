"""What plugins written for pytest-xdist see of ``--par`` workers, as xdist shows them.

In each worker process: ``config.workerinput`` (``workerid`` "gw0", "gw1"...,
``workercount``, ``testrunuid``, ``mainargv``, and what plugins added in
``pytest_configure_node``), ``config.workeroutput``, which the worker fills in its
``pytest_sessionfinish`` and sends back, and the variables ``PYTEST_XDIST_WORKER``,
``PYTEST_XDIST_WORKER_COUNT`` and ``PYTEST_XDIST_TESTRUNUID``.  In the main process, per
worker, a ``WorkerNode`` standing for xdist's ``WorkerController`` in its hooks
``pytest_configure_node(node)`` and ``pytest_testnodedown(node, error)``.

A worker has ``config.workerinput`` from the moment it starts running tests: a forked
worker was configured, and collected, as the main process (a spawned one too, to match),
so plugins that read it in ``pytest_configure`` find none; the variables a spawned worker
has from its start.  With pytest-xdist installed, its hook specs and its ``worker_id`` and
``testrun_uid`` fixtures (which read ``config.workerinput``) serve as they are; without
it, this module adds the same specs and fixtures.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

__all__ = [
    "Nodes",
    "WorkerNode",
    "become_worker",
    "new_uid",
    "register_fixtures",
    "spawned_worker_environment",
]


class Gateway:
    """The part of an execnet gateway that plugins read from ``node.gateway``: its id."""

    def __init__(self, id: str) -> None:
        self.id = id


class WorkerNode:
    """One worker, in the main process, as the ``node`` of pytest-xdist's hooks.

    ``workeroutput`` exists once the worker has finished its session, as in xdist
    (plugins test for it with ``getattr(node, "workeroutput", ...)``).
    """

    def __init__(
        self, config: pytest.Config, workerid: str, workercount: int, testrunuid: str
    ) -> None:
        self.config = config
        self.gateway = Gateway(workerid)
        self.workerinput: dict[str, Any] = {
            "workerid": workerid,
            "workercount": workercount,
            "testrunuid": testrunuid,
            "mainargv": list(sys.argv),
        }
        self.shutting_down = False
        self.down = False

    def __repr__(self) -> str:
        return f"<WorkerNode {self.gateway.id}>"


class Nodes:
    """The nodes of a run's workers: "gw0"... in start order; a worker replacing one that
    crashed gets the next id, as in xdist."""

    def __init__(self, config: pytest.Config, workercount: int) -> None:
        self.config = config
        self.workercount = workercount
        given = config.getoption("testrunuid", None)  # pytest-xdist's --testrunuid
        self.testrunuid = str(given) if given else new_uid()
        self._started = 0
        _add_hookspecs_unless_xdist(config)
        # pytest-cov's main process measures as in a serial run (--par records what its
        # workers run itself: worker_coverage), which has no part in xdist's hooks.
        coverage = config.pluginmanager.get_plugin("_cov")
        remove = [coverage] if coverage is not None else []
        manager = config.pluginmanager
        self._configure_node = manager.subset_hook_caller("pytest_configure_node", remove)
        self._testnodedown = manager.subset_hook_caller("pytest_testnodedown", remove)

    def new(self) -> WorkerNode:
        """The node of a worker about to start, once plugins have configured it."""
        node = WorkerNode(self.config, f"gw{self._started}", self.workercount, self.testrunuid)
        self._started += 1
        if hasattr(self.config.option, "numprocesses"):
            # pytest-xdist's option, which plugins read at the end of the run to know how
            # many workers should have sent their workeroutput (syrupy deletes no snapshot
            # when one is missing).  Set only now: at configuration time, xdist would start
            # workers of its own.
            self.config.option.numprocesses = self._started
        self._configure_node(node=node)
        return node

    def finished(self, node: WorkerNode, workeroutput: dict[str, Any]) -> None:
        """The worker ran its ``pytest_sessionfinish`` and sent ``workeroutput``."""
        node.workeroutput = workeroutput  # type: ignore[attr-defined]
        self.down(node, None)

    def down(self, node: WorkerNode, error: object) -> None:
        """The worker is gone: finished (``error`` None) or crashed (what happened)."""
        if node.down:
            return
        node.down = node.shutting_down = True
        self._testnodedown(node=node, error=error)


def become_worker(config: pytest.Config, workerinput: dict[str, Any]) -> None:
    """In a worker process: what pytest-xdist's workers have."""
    config.workerinput = workerinput  # type: ignore[attr-defined]
    config.workeroutput = _filled_at_configure(config)  # type: ignore[attr-defined]
    os.environ.update(_variables(workerinput))


def _filled_at_configure(config: pytest.Config) -> dict[str, Any]:
    """The ``workeroutput`` an xdist worker has after ``pytest_configure``, which ran here
    before this process was a worker: pytest-metadata (pytest-html's) puts its metadata
    there, and its ``pytest_testnodedown`` fails the run without it."""
    workeroutput: dict[str, Any] = {}
    metadata = config.pluginmanager.get_plugin("metadata")
    key = getattr(metadata, "metadata_key", None)
    if isinstance(key, pytest.StashKey) and key in config.stash:
        workeroutput["metadata"] = config.stash[key]
    return workeroutput


def spawned_worker_environment(workerinput: dict[str, Any]) -> dict[str, str]:
    """Environment variables of a spawned worker: pytest-xdist's."""
    return _variables(workerinput)


def new_uid() -> str:
    import uuid  # here: every pytest run imports this module

    return uuid.uuid4().hex


def _variables(workerinput: dict[str, Any]) -> dict[str, str]:
    return {
        "PYTEST_XDIST_WORKER": str(workerinput["workerid"]),
        "PYTEST_XDIST_WORKER_COUNT": str(workerinput["workercount"]),
        "PYTEST_XDIST_TESTRUNUID": str(workerinput["testrunuid"]),
    }


def _add_hookspecs_unless_xdist(config: pytest.Config) -> None:
    caller = getattr(config.hook, "pytest_configure_node", None)
    if caller is None or caller.spec is None:  # pytest-xdist is not loaded
        from pytest_memo.parallel import hookspecs

        config.pluginmanager.add_hookspecs(hookspecs)


def register_fixtures(config: pytest.Config) -> None:
    """Provide ``worker_id`` and ``testrun_uid`` unless pytest-xdist does."""
    if not config.pluginmanager.has_plugin("xdist"):
        from pytest_memo.parallel import xdist_fixtures

        config.pluginmanager.register(xdist_fixtures, "pytest_memo.parallel.xdist_fixtures")
