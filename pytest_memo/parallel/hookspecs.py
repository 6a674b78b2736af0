"""Hooks of the parallel runner, for other plugins (pytest-memo's own memo plugin among
them) to take part in a ``--par`` run of process workers.

Registered by ``pytest_memo.parallel.plugin`` in ``pytest_addhooks``.  Implementations
in plugins that may run without this one mark themselves ``optionalhook=True``.  Like
pytest-xdist's ``workeroutput``, each plugin keeps its part of the dict under a key of
its own.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_par_worker_finished(config: pytest.Config, workeroutput: dict[str, Any]) -> None:
    """In a worker process that ran its last test and is about to exit (it runs no
    ``pytest_sessionfinish``): finish what the worker did, and put what the main process
    should know under the plugin's key in ``workeroutput``; values must be picklable."""


@pytest.hookspec
def pytest_par_worker_output(config: pytest.Config, workeroutput: dict[str, Any]) -> None:
    """In the main process, once per worker that exited normally, with the
    ``workeroutput`` that ``pytest_par_worker_finished`` filled there."""
