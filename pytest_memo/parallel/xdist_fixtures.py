"""pytest-xdist's ``worker_id`` and ``testrun_uid`` fixtures, for runs without pytest-xdist
(registered by ``pytest_memo.parallel.nodes.register_fixtures``); the same, to the letter:
both read ``config.workerinput``, which ``--par`` workers have as xdist's do."""

from __future__ import annotations

import pytest

from pytest_memo.parallel.nodes import new_uid


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """The id of this worker process ("gw0", "gw1"...), or "master" outside workers."""
    workerinput = getattr(request.config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput is not None else "master"


@pytest.fixture(scope="session")
def testrun_uid(request: pytest.FixtureRequest) -> str:
    """An id of the run, the same in all its workers."""
    workerinput = getattr(request.config, "workerinput", None)
    return str(workerinput["testrunuid"]) if workerinput is not None else new_uid()
