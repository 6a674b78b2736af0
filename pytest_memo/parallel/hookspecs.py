"""pytest-xdist's hooks about workers, for runs without pytest-xdist.

``--par`` calls them as xdist does (see ``pytest_memo.parallel.nodes``), so plugins
written for xdist gather what workers did unchanged.  With pytest-xdist installed its own
specs serve; these are added only when it is not loaded.  The same signatures as
``xdist.newhooks``.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_configure_node(node: Any) -> None:
    """In the main process, before a worker starts: ``node.workerinput`` is the dict the
    worker will have as ``config.workerinput``."""


@pytest.hookspec
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the main process, when a worker is gone: ``node.workeroutput`` is what it put
    in ``config.workeroutput`` during its ``pytest_sessionfinish`` (``error`` is None),
    absent if it crashed (``error`` says how)."""
