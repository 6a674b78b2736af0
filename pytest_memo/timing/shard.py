"""``--shard=I/N``: disjoint parts of a suite for the jobs of a CI matrix, balanced by durations."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

__all__ = ["parse_shard", "shard"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); raises ValueError with the fix in its message."""
    index, _, count = text.partition("/")
    try:
        shard, shards = int(index), int(count)
    except ValueError:
        shard = shards = 0
    if not 1 <= shard <= shards:
        raise ValueError(f"--shard takes I/N with 1 <= I <= N, such as 2/4; got {text!r}")
    return shard, shards


def shard(
    nodeids: Sequence[str], durations: Mapping[str, float], index: int, count: int
) -> set[str]:
    """The node ids of shard ``index`` (1-based) of ``count`` disjoint shards covering ``nodeids``.

    With recorded durations: longest processing time first, each test to the shard with
    the least work so far (tests without a recorded duration count as the median).
    Without: ``count`` contiguous slices of equal size, which keeps modules together.
    Every job of a CI matrix computes the same split from the same ids and durations.
    """
    known = sorted(durations[nodeid] for nodeid in nodeids if nodeid in durations)
    if not known:
        low, high = len(nodeids) * (index - 1) // count, len(nodeids) * index // count
        return set(nodeids[low:high])
    typical = known[len(known) // 2]
    weighted = sorted(
        ((durations.get(n, typical), n) for n in nodeids), key=lambda t: (-t[0], t[1])
    )
    loads = [(0.0, number) for number in range(count)]  # a heap of (work so far, shard)
    chosen: set[str] = set()
    for weight, nodeid in weighted:
        work, number = heapq.heappop(loads)
        if number == index - 1:
            chosen.add(nodeid)
        heapq.heappush(loads, (work + weight, number))
    return chosen
