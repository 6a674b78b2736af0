"""Which tests go first, and which go together.  Pure functions of ids, marks, fixture
parameters and durations."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Any

__all__ = [
    "group_name",
    "long_test_seconds",
    "marked_serial",
    "order",
    "scope_groups",
    "units",
]

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
    items: Sequence[Any],
    seconds: Sequence[float],
    keep_order: bool,
    workers: int = 1,
    long_first: bool = False,
) -> list[int]:
    """Item indices: long tests first, then the slowest modules first (by ``seconds``,
    each item's duration recorded on earlier runs, 0 when unknown).

    A test is long when it alone takes more than ``LONG_TEST_SHARE`` of a worker's even
    share of the run: started late, it would stretch the run while the other workers
    idle, so such tests go first, the longest first.  Within a module the collection
    order is kept, so module fixtures stay warm; with no durations, or when the order
    was chosen by --ff/--nf/--sw, it is the collection order.  ``keep_order`` with
    ``long_first`` (an order shuffled by pytest-randomly): long tests first, the rest in
    the order given.
    """
    indices = list(range(len(items)))
    if not any(seconds) or (keep_order and not long_first):
        return indices
    if keep_order:
        return _long_first(indices, seconds, workers)
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
    return _long_first(by_module, seconds, workers)


def _long_first(ordered: list[int], seconds: Sequence[float], workers: int) -> list[int]:
    """``ordered`` with its long tests first, the longest first."""
    threshold = long_test_seconds(seconds, workers)
    long = sorted((i for i in ordered if seconds[i] > threshold), key=lambda i: (-seconds[i], i))
    chosen = set(long)
    rest = [i for i in ordered if i not in chosen]
    # Each long test is followed by a short one: a worker holds the test after the one
    # it runs, and two long tests must not end up one after the other on one worker.
    result: list[int] = []
    for position, index in enumerate(long):
        result.append(index)
        result.extend(rest[position : position + 1])
    return result + rest[len(long) :]


def long_test_seconds(seconds: Sequence[float], workers: int) -> float:
    """Above this many seconds a test is long: more than ``LONG_TEST_SHARE`` of a
    worker's even share of the run."""
    return LONG_TEST_SHARE * sum(seconds) / max(1, workers)


def scope_groups(items: Sequence[Any], ordered: Sequence[int]) -> list[list[int]]:
    """Consecutive runs of ``ordered`` that share a module or class: one worker each."""
    return units(items, ordered, "scope", [None] * len(items), [()] * len(items))


def group_name(item: Any) -> str | None:
    """The ``xdist_group`` an item belongs to, named as pytest-xdist names it (several
    marks: their names sorted and joined by ``_``), or None."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) if names else None


def units(
    items: Sequence[Any],
    ordered: Sequence[int],
    dist: str,
    groups: Sequence[str | None],
    keys: Sequence[Hashable],
    alone: Collection[int] = (),
) -> list[list[int]]:
    """What goes to one worker at a time, in the order of ``ordered``.

    The items of an ``xdist_group`` are one unit, in collection order, where the group's
    first item is.  With ``dist`` "scope" (or "file"), the items of each class or module
    (or module) that share ``keys`` (their parameters of fixtures wider than a test) are
    one unit: a worker sets each of those fixtures up once for it.  Any other item, and
    every item of ``alone`` (tests that run while no other test runs), is a unit of its
    own.
    """
    result: list[list[int]] = []
    together: dict[Hashable, list[int]] = {}
    for index in ordered:
        group = groups[index]
        name: Hashable
        if index in alone:
            result.append([index])
            continue
        if group is not None:
            name = ("group", group)
        elif dist == "scope":
            name = ("scope", _scope_of(items[index].nodeid), keys[index])
        elif dist == "file":
            name = ("file", _module_of(items[index].nodeid), keys[index])
        else:
            result.append([index])
            continue
        if name not in together:
            together[name] = []
            result.append(together[name])
        together[name].append(index)
    for name, unit in together.items():
        if isinstance(name, tuple) and name[0] == "group":
            unit.sort()  # as pytest-xdist runs a group: in collection order
    return result


def marked_serial(item: Any, patterns: Iterable[str]) -> bool:
    """Whether the user asked for ``item`` to run alone: the ``serial`` mark, or a
    ``par_serial`` pattern matching its node id."""
    if item.get_closest_marker("serial") is not None:
        return True
    return any(fnmatch.fnmatch(item.nodeid, pattern) for pattern in patterns)
