"""The memo state of the pytest run in progress, for ``pytest_memo.cache``.

The plugin says how to set the state up (``run_started``), and it is set up when a
cached function is first called: a run that memoizes nothing imports none of the memo
machinery.  This module is the only link between the two, so that the plugin need not
import ``cache`` (and all it imports) to hand it the run's store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["run_ended", "run_started", "set_up"]

# One per run in progress, innermost last (a pytester run inside a test is a run too).
_runs: list[tuple[object, Callable[[], Any]]] = []


def run_started(run: object, set_up_state: Callable[[], Any]) -> None:
    """Called by the plugin: ``set_up_state`` returns ``run``'s memo state (a
    ``FixtureMemo``), setting it up on its first call."""
    _runs.append((run, set_up_state))


def run_ended(run: object) -> None:
    """``run`` is over: cached functions go back to the run around it, if any."""
    _runs[:] = [(other, set_up_state) for other, set_up_state in _runs if other is not run]


def set_up() -> Any:
    """The innermost run's memo state, set up now if it was not; None outside pytest."""
    return _runs[-1][1]() if _runs else None
