"""Which items each worker runs next: the batching decisions of the process runner.

Pure bookkeeping, with no processes and no pytest: workers are any hashable values (the
controller passes its worker objects, the tests plain names), items are indices.  The
controller tells the scheduler what happens (a worker added or gone, an item done, the
run stopped) and asks it for a worker's next batch.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from pytest_memo.parallel.schedule import long_test_seconds

__all__ = ["MAX_BATCH", "QUEUED_SECONDS", "Scheduler"]

MAX_BATCH = 64
QUEUED_SECONDS = 0.01  # work a worker holds beyond its current test, when tests are quick

W = TypeVar("W", bound=Hashable)


class _Lane:
    """Units sharing the parameters of fixtures wider than a test (``key``), in order:
    the worker working on a lane sets those fixtures up once for all of it."""

    __slots__ = ("key", "units")

    def __init__(self, key: Hashable, units: Iterable[list[int]] = ()) -> None:
        self.key = key
        self.units: deque[list[int]] = deque(units)


class Scheduler(Generic[W]):
    """Hands out ``units`` (single items, or items kept together: an ``xdist_group``, or
    with --par-dist=scope a module's or class's items) to at most ``workers`` workers.

    ``expected``: seconds each item took on an earlier run (0 when unknown): batches are
    cut by expected time as well as by count.  Each worker's items are held here, in the
    order it runs them, until it reports them done.

    ``keys``: per item, the parameters of fixtures wider than a test that it uses (pytest
    orders items so that each such value is set up once).  Units sharing a key form a
    *lane*, and each worker works through a lane of its own: splitting the items of one
    parameter between workers would set the fixture up on each of them.  A worker whose
    lane is done takes the next lane nobody works on (preferring one with its key), and
    once there is none, it joins the workers of the biggest lane left.  With
    ``in_order`` (an order chosen by --ff, --nf, --sw or pytest-randomly), lanes are
    the consecutive runs of one key, taken in order.

    Long tests (``long_first``) and items requeued after a crash go first, to any worker.
    ``alone``: items that run while no other item runs (``@pytest.mark.serial``): they
    are handed out before anything else, to one worker, while the others hold nothing,
    and no other worker is given work until they are done.
    """

    def __init__(
        self,
        units: Iterable[Sequence[int]],
        expected: Sequence[float],
        workers: int,
        keys: Sequence[Hashable] | None = None,
        alone: Iterable[int] = (),
        in_order: bool = False,
        long_first: bool = True,
    ) -> None:
        all_units = [list(unit) for unit in units]
        self.expected = expected
        self.wanted = max(1, min(workers, len(all_units)))
        self.long_seconds = long_test_seconds(expected, self.wanted)
        self.alone = frozenset(alone)
        self.in_order = in_order
        self.solo: deque[list[int]] = deque()  # pending units of ``alone``
        self.urgent: deque[list[int]] = deque()  # long tests, items requeued after a crash
        self.free: deque[_Lane] = deque()  # lanes no worker works on, in order
        self.lane_of: dict[W, _Lane] = {}
        self.last_key: dict[W, Hashable] = {}  # of each worker's latest lane
        by_key: dict[Hashable, _Lane] = {}
        for unit in all_units:
            key = keys[unit[0]] if keys is not None else ()
            long = long_first and len(unit) == 1 and self._seconds(unit) > self.long_seconds
            if not self.alone.isdisjoint(unit):
                self.solo.append(unit)
            elif long and (in_order or key == ()):
                self.urgent.append(unit)
            elif in_order:
                if not self.free or self.free[-1].key != key:
                    self.free.append(_Lane(key))
                self.free[-1].units.append(unit)
            else:
                if key not in by_key:
                    by_key[key] = _Lane(key)
                    self.free.append(by_key[key])
                by_key[key].units.append(unit)
        if long_first and not in_order:
            self._long_tests_first_in_lanes()
        self.pending = len(all_units)  # units not handed out yet
        # The expected seconds of the pending items.
        self.pending_seconds = sum(self._seconds(unit) for unit in all_units)
        self.held: dict[W, deque[int]] = {}
        # Wall time a worker takes per item, reports included: a moving average.
        self.seconds_per_item = 0.0

    def _long_tests_first_in_lanes(self) -> None:
        """A long test that shares a fixture parameter with others leads its lane, and
        lanes with the longest such tests go first: the test starts at once, and the
        fixture is set up on its worker only (the first test of a parameter is often
        the long one: its recorded time includes the fixture's setup)."""

        def seconds(unit: list[int]) -> float:
            value = self._seconds(unit)
            return value if len(unit) == 1 and value > self.long_seconds else 0.0

        for lane in self.free:
            lane.units = deque(sorted(lane.units, key=lambda unit: -seconds(unit)))
        lanes = sorted(self.free, key=lambda lane: -seconds(lane.units[0]))
        self.free = deque(lanes)

    # -- what happens ---------------------------------------------------------

    def worker_added(self, worker: W) -> None:
        self.held[worker] = deque()

    def worker_gone(self, worker: W) -> list[int]:
        """Forget ``worker``; the items it held, the one it was running first."""
        lane = self.lane_of.pop(worker, None)
        if lane is not None and lane.units and lane not in self.lane_of.values():
            self.free.appendleft(lane)  # the next worker to need a lane takes it over
        self.last_key.pop(worker, None)
        return list(self.held.pop(worker))

    def item_done(self, worker: W, index: int, seconds: float) -> None:
        """``worker`` finished ``index`` (the first item it held) in ``seconds``, wall time."""
        finished = self.held[worker].popleft()
        assert finished == index, (finished, index)
        if self.seconds_per_item == 0.0:
            self.seconds_per_item = seconds
        self.seconds_per_item += 0.1 * (seconds - self.seconds_per_item)

    def requeue(self, indices: Sequence[int]) -> None:
        """Run these items first, in this order, each on its own (after a crash)."""
        for index in reversed(indices):
            (self.solo if index in self.alone else self.urgent).appendleft([index])
        self.pending += len(indices)
        self.pending_seconds += self._seconds(indices)

    def drop(self, worker: W) -> None:
        """``worker`` runs nothing more of what it holds (a test stopped the run)."""
        self.held[worker].clear()

    def stop(self) -> None:
        """Hand out nothing more (-x, --maxfail, a test's pytest.exit())."""
        self.solo.clear()
        self.urgent.clear()
        self.free.clear()
        self.lane_of.clear()
        self.pending = 0
        self.pending_seconds = 0.0

    # -- what to do -----------------------------------------------------------

    def holds(self, worker: W) -> deque[int]:
        """The items ``worker`` was given and has not reported done, in order."""
        return self.held[worker]

    def due(self, worker: W) -> bool:
        """Whether to top ``worker`` up now, or tell it no work is left.

        A worker holding more than two items is topped up when it reports its next one:
        sizing a batch for every worker after every message cost the controller more than
        anything but reporting."""
        return len(self.held[worker]) <= 2 or not self.pending

    def next_batch(self, worker: W) -> list[int]:
        """Items to give ``worker`` now (none if it holds enough), which it then holds."""
        held = self.held[worker]
        target = self._target_queue_length(worker)
        # Refill while the worker still holds the item after next: a worker runs an item
        # only once it knows the next one (pytest needs it), so with less in hand it
        # would sit idle for the round trip to the controller.
        if not self.pending or len(held) > max(2, target // 2):
            return []
        batch: list[int] = []
        # A batch holds at most its share of the expected time left, so that a worker
        # given a long test is not given much else with it (see _must_hold); but quick
        # tests fill QUEUED_SECONDS, to keep the worker busy while the controller answers.
        share = self.pending_seconds / (4 * self._worker_count())
        budget = max(share, QUEUED_SECONDS)
        while len(held) + len(batch) < target:
            source = self._source(worker, held, batch)
            if not source:
                break
            seconds = self._seconds(source[0])
            if seconds > budget and not self._must_hold(len(held) + len(batch), seconds):
                break
            budget -= seconds
            self.pending_seconds -= seconds
            self.pending -= 1
            batch.extend(source.popleft())
        held.extend(batch)
        return batch

    # -- how --------------------------------------------------------------------

    def _source(self, worker: W, held: Sequence[int], batch: Sequence[int]) -> deque[list[int]]:
        """Where ``worker``'s next unit comes from (empty: nowhere, for now)."""
        if self.alone:
            others = [items for other, items in self.held.items() if other != worker]
            if any(not self.alone.isdisjoint(items) for items in others):
                return deque()  # a test runs alone elsewhere: wait
            if self.solo:
                # While others still run tests, wait for them (they hold none at the
                # start of the run, where these tests are).
                return deque() if any(others) else self.solo
            if (
                self.alone.isdisjoint(batch)
                and self.alone.isdisjoint(held)
                and not any(not self.alone.isdisjoint(items) for items in others)
            ):
                self.alone = frozenset()  # all done: no more checks
        last = batch[-1] if batch else (held[-1] if held else None)
        last_long = last is not None and self.expected[last] > self.long_seconds
        # Each long test is followed by a short one: a worker holds the test after the
        # one it runs, and two long tests must not end up one after the other on it.
        if self.urgent and not last_long:
            return self.urgent
        lane = self._lane(worker, len(held) + len(batch))
        if lane is not None:
            return lane.units
        return self.urgent

    def _lane(self, worker: W, holding: int) -> _Lane | None:
        """``worker``'s lane, or a new one if it has none or its lane is done."""
        lane = self.lane_of.get(worker)
        if lane is not None and lane.units:
            return lane
        lane = self._free_lane(worker) or self._shared_lane(worker, holding)
        if lane is None:
            self.lane_of.pop(worker, None)
            return None
        self.lane_of[worker] = lane
        self.last_key[worker] = lane.key
        return lane

    def _free_lane(self, worker: W) -> _Lane | None:
        """The next lane nobody works on: among the next few, one with ``worker``'s key
        (its fixtures are set up already) or sharing most of it; else the first."""
        if not self.free:
            return None
        best = 0
        mine = self.last_key.get(worker)
        if mine is not None and not self.in_order:
            scores = [_shared(mine, lane.key) for lane in itertools.islice(self.free, 16)]
            best = max(range(len(scores)), key=lambda position: (scores[position], -position))
        lane = self.free[best]
        del self.free[best]
        return lane

    def _shared_lane(self, worker: W, holding: int) -> _Lane | None:
        """The lane with the most units left that other workers work on (one with
        ``worker``'s key first), to work on with them; a lane's last unit only for a
        worker about to idle."""
        mine = self.last_key.get(worker)
        lanes = [
            lane
            for lane in self.lane_of.values()
            if len(lane.units) > 1 or (lane.units and holding < 2)
        ]
        if not lanes:
            return None
        return max(lanes, key=lambda lane: (lane.key == mine, len(lane.units)))

    def _must_hold(self, held: int, seconds: float) -> bool:
        """Whether a worker holding ``held`` items gets one more of ``seconds``, even
        beyond its share of the time left: it runs an item only once it knows the one
        after, so it holds three (the one it runs, the next, the one after) not to wait
        for the controller between tests; but two long tests, one after the other on one
        worker, would stretch the run."""
        return held < 2 or (held < 3 and seconds <= self.long_seconds)

    def _worker_count(self) -> int:
        """Workers of the run, counting those not started yet (or replacements)."""
        return max(self.wanted, len(self.held))

    def _seconds(self, unit: Sequence[int]) -> float:
        return sum(self.expected[index] for index in unit)

    def _target_queue_length(self, worker: W) -> int:
        """How many items a worker should hold, the one it is running included.

        Big batches while much work is left (fewer messages), small ones near the end (no
        worker sits on a backlog while another is idle); 3, so that a worker always knows
        the item after its next, unless that is more than its share of what is left; and,
        for quick tests, enough to keep it busy for ``QUEUED_SECONDS`` while the
        controller answers.
        """
        workers = self._worker_count()
        share = self.pending // (4 * workers)
        per_item = self._upcoming_seconds_per_item(worker)
        quick = math.ceil(QUEUED_SECONDS / per_item) if per_item else 0
        target = max(3, min(MAX_BATCH, max(share, quick)))
        # Never beyond an even split of what is left: with a few long tests, one worker
        # holding three would leave another with none.  Quick tests are exempt: a few of
        # them more on one worker cost less than its waits for the controller.
        left = self.pending + sum(len(held) for held in self.held.values())
        return max(2, min(target, max(quick, math.ceil(left / workers))))

    def _upcoming_seconds_per_item(self, worker: W) -> float:
        """What each of the next pending items is expected to take: as recorded on an
        earlier run when every one of them has a record, else as measured in this one.

        The measurement is a moving average, slow to follow a change: after a stretch of
        slow tests, quick ones would be handed out one at a time, each worker waiting on a
        round trip to the controller between them.
        """
        lane = self.lane_of.get(worker)
        if lane is None or not lane.units:
            lane = self.free[0] if self.free else None
        pending = self.urgent or (lane.units if lane is not None else self.solo)
        upcoming = [index for unit in itertools.islice(pending, 8) for index in unit]
        recorded = [self.expected[index] for index in upcoming]
        if recorded and all(recorded):
            return sum(recorded) / len(recorded)
        return self.seconds_per_item


def _shared(key: Hashable, other: Hashable) -> int:
    """How many fixture parameters two keys share (keys are tuples of them)."""
    if key == other:
        return 1 << 20
    if isinstance(key, tuple) and isinstance(other, tuple):
        return len(set(key).intersection(other))
    return 0
