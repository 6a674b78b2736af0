"""The memo state of the pytest run in progress, for ``pytest_memo.cache``.

The plugin says how to set the state up (``defer``), and it is set up when a cached
function is first called: a run that memoizes nothing imports none of the memo machinery.
This module is the only link between the two, so that the plugin need not import
``cache`` (and all it imports) to hand it the run's store.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["defer", "set_up"]

_pending: list[Callable[[], object]] = []


def defer(set_up_state: Callable[[], object] | None) -> None:
    """Called by the plugin: ``set_up_state`` sets up the run's memo state, which hands
    cached functions its store (``cache.use_store``); None when the run ends."""
    _pending.clear()
    if set_up_state is not None:
        _pending.append(set_up_state)


def set_up() -> None:
    """Set the run's memo state up now, if a run is in progress and has not yet."""
    if _pending:
        _pending.pop()()
