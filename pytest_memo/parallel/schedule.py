"""Which tests go first, and which go together.  Pure functions of ids and durations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["long_test_seconds", "order", "scope_groups"]

LONG_TEST_SHARE = 1 / 8  # of a worker's even share of the run: such a test goes first


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _scope_of(nodeid: str) -> str:
    """The module and class a test belongs to: ``a.py::Class`` or ``a.py``."""
    parts = nodeid.split("::")
    if len(parts) > 2:
        return "::".join(parts[:-1])
    return parts[0]


def order(
    items: Sequence[Any], seconds: Sequence[float], keep_order: bool, workers: int = 1
) -> list[int]:
    """Item indices: long tests first, then the slowest modules first (by ``seconds``,
    each item's duration recorded on earlier runs, 0 when unknown).

    A test is long when it alone takes more than ``LONG_TEST_SHARE`` of a worker's even
    share of the run: started late, it would stretch the run while the other workers
    idle, so such tests go first, the longest first.  Within a module the collection
    order is kept, so module fixtures stay warm; with no durations, or when the order
    was chosen by --ff/--nf/--sw, it is the collection order.
    """
    indices = list(range(len(items)))
    if keep_order or not any(seconds):
        return indices
    totals: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        module = _module_of(item.nodeid)
        totals[module] = totals.get(module, 0.0) + seconds[index]
        first_seen.setdefault(module, index)
    by_module = sorted(
        indices,
        key=lambda i: (
            -totals[_module_of(items[i].nodeid)],
            first_seen[_module_of(items[i].nodeid)],
            i,
        ),
    )
    threshold = long_test_seconds(seconds, workers)
    long = sorted((i for i in indices if seconds[i] > threshold), key=lambda i: (-seconds[i], i))
    chosen = set(long)
    rest = [i for i in by_module if i not in chosen]
    # Each long test is followed by a short one: a worker holds the test after the one
    # it runs, and two long tests must not end up one after the other on one worker.
    ordered: list[int] = []
    for position, index in enumerate(long):
        ordered.append(index)
        ordered.extend(rest[position : position + 1])
    return ordered + rest[len(long) :]


def long_test_seconds(seconds: Sequence[float], workers: int) -> float:
    """Above this many seconds a test is long: more than ``LONG_TEST_SHARE`` of a
    worker's even share of the run."""
    return LONG_TEST_SHARE * sum(seconds) / max(1, workers)


def scope_groups(items: Sequence[Any], ordered: Sequence[int]) -> list[list[int]]:
    """Consecutive runs of ``ordered`` that share a module or class: one worker each."""
    groups: list[list[int]] = []
    by_scope: dict[str, list[int]] = {}
    for index in ordered:
        scope = _scope_of(items[index].nodeid)
        if scope not in by_scope:
            by_scope[scope] = []
            groups.append(by_scope[scope])
        by_scope[scope].append(index)
    return groups
