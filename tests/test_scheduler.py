"""The process runner's scheduler, driven by fake workers: no processes, no pytest runs.

Like pytest-xdist's scheduler tests with MockNode objects: a worker here is a name, the
"run" is a loop that hands out batches and reports items done (or crashes a worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_memo.parallel import schedule
from pytest_memo.parallel.scheduler import MAX_BATCH, Scheduler


@dataclass
class FakeItem:
    nodeid: str


def _units(count: int) -> list[list[int]]:
    return [[index] for index in range(count)]


def _run(
    scheduler: Scheduler[str],
    workers: Sequence[str],
    crash: frozenset[int] = frozenset(),
    seconds: float = 0.1,
) -> tuple[dict[str, list[list[int]]], list[int], list[int]]:
    """Serve every worker until no work is left, round robin, one item per turn; a worker
    crashes while running an item of ``crash`` and a new worker takes its place.  Each
    item takes ``seconds`` (measured, as the controller would).

    Returns the batches each worker was given, the items done, the items crashed."""
    batches: dict[str, list[list[int]]] = {}
    done: list[int] = []
    crashed: list[int] = []
    active = list(workers)
    for worker in active:
        scheduler.worker_added(worker)
    spare = 0
    turns = 0
    while any(scheduler.holds(worker) for worker in active) or scheduler.pending:
        turns += 1
        assert turns < 100_000, "the scheduler stalls"
        for worker in list(active):
            if scheduler.due(worker):
                batch = scheduler.next_batch(worker)
                if batch:
                    batches.setdefault(worker, []).append(batch)
            held = scheduler.holds(worker)
            if not held:
                continue
            if held[0] in crash:
                gone = scheduler.worker_gone(worker)
                crashed.append(gone[0])
                scheduler.requeue(gone[1:])
                active.remove(worker)
                spare += 1
                active.append(f"replacement-{spare}")
                scheduler.worker_added(active[-1])
                continue
            index = held[0]
            scheduler.item_done(worker, index, seconds)
            done.append(index)
    return batches, done, crashed


def test_every_item_is_handed_out_once() -> None:
    scheduler: Scheduler[str] = Scheduler(_units(500), [0.0] * 500, workers=3)
    batches, done, crashed = _run(scheduler, ["a", "b", "c"])
    assert sorted(done) == list(range(500))
    assert not crashed
    assert set(batches) == {"a", "b", "c"}


def test_batches_shrink_near_the_end() -> None:
    scheduler: Scheduler[str] = Scheduler(_units(2000), [0.0] * 2000, workers=2)
    batches, done, _ = _run(scheduler, ["a", "b"])
    sizes = [len(batch) for batch in batches["a"]]
    assert sizes[0] == MAX_BATCH  # much left: big batches, few messages
    assert sizes == sorted(sizes, reverse=True)
    assert max(sizes[-3:]) <= 3  # near the end no worker sits on a backlog
    assert sorted(done) == list(range(2000))


def test_quick_tests_keep_a_worker_busy_while_the_controller_answers() -> None:
    scheduler: Scheduler[str] = Scheduler(_units(2000), [0.0] * 2000, workers=2)
    batches, _, _ = _run(scheduler, ["a", "b"], seconds=0.0001)
    assert min(len(batch) for batch in batches["a"][:-1]) >= 8


def test_a_long_test_is_not_queued_behind_another() -> None:
    seconds = [30.0, 30.0, 30.0] + [0.05] * 60
    items = [FakeItem(f"test_{index // 10}.py::test_{index}") for index in range(len(seconds))]
    order = schedule.order(items, seconds, keep_order=False, workers=3)
    assert order[0:5:2] == [0, 1, 2]  # long tests first, each followed by a short one
    scheduler: Scheduler[str] = Scheduler([[index] for index in order], seconds, workers=3)
    for worker in "abc":
        scheduler.worker_added(worker)
    first = {worker: scheduler.next_batch(worker) for worker in "abc"}
    assert [batch[0] for batch in first.values()] == [0, 1, 2]  # one long test each
    for batch in first.values():
        assert sum(1 for index in batch if seconds[index] > 1) == 1


def test_items_of_a_crashed_worker_are_handed_out_again_first() -> None:
    scheduler: Scheduler[str] = Scheduler(_units(40), [0.0] * 40, workers=2)
    scheduler.worker_added("a")
    scheduler.worker_added("b")
    given_a = scheduler.next_batch("a")
    scheduler.next_batch("b")
    scheduler.item_done("a", given_a[0], 0.01)
    held = scheduler.worker_gone("a")
    assert held == given_a[1:]  # the one it was running first
    scheduler.requeue(held[1:])  # the running one is reported as crashed
    scheduler.worker_added("c")
    assert scheduler.next_batch("c")[: len(held) - 1] == held[1:]


def test_crashes_lose_and_repeat_nothing() -> None:
    scheduler: Scheduler[str] = Scheduler(_units(300), [0.0] * 300, workers=4)
    _, done, crashed = _run(scheduler, ["a", "b", "c", "d"], crash=frozenset({0, 17, 150, 299}))
    assert sorted(crashed) == [0, 17, 150, 299]
    assert sorted(done + crashed) == list(range(300))


def test_scope_groups_stay_on_one_worker() -> None:
    items = [FakeItem(f"test_{index // 7}.py::test_{index}") for index in range(70)]
    order = schedule.order(items, [0.0] * 70, keep_order=False)
    groups = schedule.scope_groups(items, order)
    scheduler: Scheduler[str] = Scheduler(groups, [0.0] * 70, workers=3)
    batches, done, _ = _run(scheduler, ["a", "b", "c"])
    assert sorted(done) == list(range(70))
    given = {
        index: worker for worker, lists in batches.items() for batch in lists for index in batch
    }
    for group in groups:
        assert len({given[index] for index in group}) == 1, group


def test_stop_hands_out_nothing_more() -> None:
    scheduler: Scheduler[str] = Scheduler(_units(100), [0.0] * 100, workers=2)
    scheduler.worker_added("a")
    batch = scheduler.next_batch("a")
    scheduler.stop()
    scheduler.drop("a")
    assert not scheduler.pending
    assert not scheduler.holds("a")
    assert scheduler.next_batch("a") == []
    assert batch


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=60),
    seconds=st.lists(st.sampled_from([0.0, 0.001, 0.5, 20.0]), min_size=360, max_size=360),
    keys=st.lists(st.integers(0, 3), min_size=360, max_size=360),
    alone=st.sets(st.integers(0, 359), max_size=4),
    workers=st.integers(1, 5),
    crash=st.sets(st.integers(0, 359), max_size=5),
    in_order=st.booleans(),
)
def test_no_item_is_lost_or_duplicated(
    sizes: list[int],
    seconds: list[float],
    keys: list[int],
    alone: set[int],
    workers: int,
    crash: set[int],
    in_order: bool,
) -> None:
    units, start = [], 0
    for size in sizes:
        units.append(list(range(start, start + size)))
        start += size
    scheduler: Scheduler[str] = Scheduler(
        units, seconds[:start], workers, keys=keys, alone=alone, in_order=in_order
    )
    names = [f"w{number}" for number in range(workers)]
    batches, done, crashed = _run(scheduler, names, crash=frozenset(crash))
    handed_out = [index for lists in batches.values() for batch in lists for index in batch]
    assert sorted(done + crashed) == list(range(start))
    # handed out once, and once more only if requeued after a crash
    assert len(handed_out) >= start
    assert len(set(done)) == len(done)


def _setups(batches: dict[str, list[list[int]]], keys: Sequence[object]) -> int:
    """How often workers switch to another fixture parameter (each switch: a setup)."""
    count = 0
    for lists in batches.values():
        ran = [keys[index] for batch in lists for index in batch]
        count += sum(1 for before, now in zip([None, *ran], ran, strict=False) if before != now)
    return count


def test_tests_sharing_a_fixture_parameter_stay_together() -> None:
    # pytest's order: 20 tests of each of 3 parameters of a session fixture.  Handed
    # out one by one in that order, every worker would set up every parameter.
    keys = [(("resource", index // 20),) for index in range(60)]
    for seconds in ([0.0] * 60, [0.3 if index % 20 == 0 else 0.01 for index in range(60)]):
        scheduler: Scheduler[str] = Scheduler(_units(60), seconds, workers=2, keys=keys)
        batches, done, _ = _run(scheduler, ["a", "b"], seconds=0.01)
        assert sorted(done) == list(range(60))
        # a worker per parameter, and one of them joins the last parameter's worker
        assert _setups(batches, keys) <= 4


def test_long_tests_sharing_a_parameter_start_first_on_their_lane() -> None:
    keys = [(("resource", index // 20),) for index in range(60)]
    seconds = [0.01] * 60
    seconds[45] = 5.0  # the last parameter's long test
    scheduler: Scheduler[str] = Scheduler(_units(60), seconds, workers=2, keys=keys)
    scheduler.worker_added("a")
    scheduler.worker_added("b")
    assert scheduler.next_batch("a")[0] == 45
    assert all(keys[index] == keys[45] for index in scheduler.holds("a"))


def test_tests_marked_serial_run_while_no_other_test_runs() -> None:
    alone = {5, 30}
    scheduler: Scheduler[str] = Scheduler(_units(60), [0.01] * 60, workers=3, alone=alone)
    for worker in "abc":
        scheduler.worker_added(worker)
    first = {worker: scheduler.next_batch(worker) for worker in "abc"}
    assert first["a"][:2] == [5, 30]  # first, on one worker
    assert first["b"] == first["c"] == []  # the others wait
    scheduler.item_done("a", 5, 0.01)
    assert scheduler.next_batch("b") == []  # 30 not done yet
    scheduler.item_done("a", 30, 0.01)
    assert scheduler.next_batch("b") and scheduler.next_batch("c")


def test_in_order_lanes_keep_the_given_order() -> None:
    # A shuffled order (pytest-randomly): each worker runs a subsequence of it.
    order = [7, 3, 11, 0, 5, 9, 1, 10, 2, 8, 4, 6]
    scheduler: Scheduler[str] = Scheduler(
        [[index] for index in order], [0.01] * 12, 2, in_order=True
    )
    batches, done, _ = _run(scheduler, ["a", "b"])
    assert sorted(done) == sorted(order)
    for lists in batches.values():
        ran = [index for batch in lists for index in batch]
        assert ran == [index for index in order if index in ran]


def test_a_shuffled_order_keeps_all_but_its_long_tests_in_place() -> None:
    items = [FakeItem(f"test_{index % 3}.py::test_{index}") for index in range(40)]
    seconds = [0.01] * 40
    seconds[30] = 5.0
    assert schedule.order(items, seconds, keep_order=True, workers=2) == list(range(40))
    shuffled = schedule.order(items, seconds, keep_order=True, workers=2, long_first=True)
    assert shuffled[0] == 30
    assert [index for index in shuffled if index != 30] == [i for i in range(40) if i != 30]
