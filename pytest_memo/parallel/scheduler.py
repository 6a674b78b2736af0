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


class Scheduler(Generic[W]):
    """Hands out ``units`` (single items, or with --par-dist=scope a module's or class's
    items, kept together) to at most ``workers`` workers at a time.

    ``expected``: seconds each item took on an earlier run (0 when unknown): batches are
    cut by expected time as well as by count.  Each worker's items are held here, in the
    order it runs them, until it reports them done.
    """

    def __init__(
        self, units: Iterable[Sequence[int]], expected: Sequence[float], workers: int
    ) -> None:
        self.pending: deque[list[int]] = deque(list(unit) for unit in units)
        self.wanted = max(1, min(workers, len(self.pending)))
        self.expected = expected
        # The expected seconds of the pending items.
        self.pending_seconds = sum(self._seconds(unit) for unit in self.pending)
        self.long_seconds = long_test_seconds(expected, self.wanted)
        self.held: dict[W, deque[int]] = {}
        # Wall time a worker takes per item, reports included: a moving average.
        self.seconds_per_item = 0.0

    # -- what happens ---------------------------------------------------------

    def worker_added(self, worker: W) -> None:
        self.held[worker] = deque()

    def worker_gone(self, worker: W) -> list[int]:
        """Forget ``worker``; the items it held, the one it was running first."""
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
        self.pending.extendleft([index] for index in reversed(indices))
        self.pending_seconds += self._seconds(indices)

    def drop(self, worker: W) -> None:
        """``worker`` runs nothing more of what it holds (a test stopped the run)."""
        self.held[worker].clear()

    def stop(self) -> None:
        """Hand out nothing more (-x, --maxfail, a test's pytest.exit())."""
        self.pending.clear()
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
        target = self._target_queue_length()
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
        while self.pending and len(held) + len(batch) < target:
            seconds = self._seconds(self.pending[0])
            if seconds > budget and not self._must_hold(len(held) + len(batch), seconds):
                break
            budget -= seconds
            self.pending_seconds -= seconds
            batch.extend(self.pending.popleft())
        held.extend(batch)
        return batch

    # -- how --------------------------------------------------------------------

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

    def _target_queue_length(self) -> int:
        """How many items a worker should hold, the one it is running included.

        Big batches while much work is left (fewer messages), small ones near the end (no
        worker sits on a backlog while another is idle); 3, so that a worker always knows
        the item after its next, unless that is more than its share of what is left; and,
        for quick tests, enough to keep it busy for ``QUEUED_SECONDS`` while the
        controller answers.
        """
        workers = self._worker_count()
        share = len(self.pending) // (4 * workers)
        per_item = self._upcoming_seconds_per_item()
        quick = math.ceil(QUEUED_SECONDS / per_item) if per_item else 0
        target = max(3, min(MAX_BATCH, max(share, quick)))
        # Never beyond an even split of what is left: with a few long tests, one worker
        # holding three would leave another with none.  Quick tests are exempt: a few of
        # them more on one worker cost less than its waits for the controller.
        left = len(self.pending) + sum(len(held) for held in self.held.values())
        return max(2, min(target, max(quick, math.ceil(left / workers))))

    def _upcoming_seconds_per_item(self) -> float:
        """What each of the next pending items is expected to take: as recorded on an
        earlier run when every one of them has a record, else as measured in this one.

        The measurement is a moving average, slow to follow a change: after a stretch of
        slow tests, quick ones would be handed out one at a time, each worker waiting on a
        round trip to the controller between them.
        """
        upcoming = [index for unit in itertools.islice(self.pending, 8) for index in unit]
        recorded = [self.expected[index] for index in upcoming]
        if recorded and all(recorded):
            return sum(recorded) / len(recorded)
        return self.seconds_per_item
