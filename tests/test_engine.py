"""The get-or-compute engine behind memoized fixtures and ``pytest_memo.cache``, with a
real store in a temporary directory; and the statistics and store API it relies on."""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from pytest_memo import MemoWarning
from pytest_memo.core.cpus import cgroup_quota, usable_cpus
from pytest_memo.memoize.engine import Lookup, Memoized, NotMemoized
from pytest_memo.memoize.stats import RunStats
from pytest_memo.store.local import Store
from pytest_memo.store.location import DEFAULT_DIRECTORY, LAYOUT, local_directory


def lookup(key: str = "k" * 32, name: str = "data", **fields: Any) -> Lookup:
    return Lookup(
        key=key, name=name, what=f"fixture {name!r}", slot=f"slot-{name}", source="x.py", **fields
    )


class Counter:
    def __init__(self, value: Any = 42) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


@pytest.fixture
def store(tmp_path: Path) -> Any:
    store = Store(tmp_path / "store")
    yield store
    store.close()


def test_a_value_is_computed_once_then_served_and_counted(store: Store) -> None:
    engine, compute = Memoized(store, RunStats()), Counter({"answer": 42})
    for _ in range(3):
        assert engine.get_or_compute(compute, lookup) == {"answer": 42}
    assert compute.calls == 1
    stats = engine.stats.of("data")
    assert (stats.hits, stats.misses) == (2, 1)
    assert engine.stats.used_keys == {"k" * 32}
    store.flush()
    (entry,) = store.listing()
    assert (entry.fixture, entry.hits, entry.slot) == ("data", 2, "slot-data")


def test_another_process_sees_the_stored_value(store: Store) -> None:
    Memoized(store, RunStats()).get_or_compute(Counter(1), lookup)
    compute = Counter(2)
    assert Memoized(Store(store.root), RunStats()).get_or_compute(compute, lookup) == 1
    assert compute.calls == 0


def test_a_damaged_entry_warns_is_removed_and_recomputed(store: Store) -> None:
    engine = Memoized(store, RunStats())
    engine.get_or_compute(Counter(1), lookup)
    store.entry_path("k" * 32).write_bytes(b"garbage")
    compute = Counter(2)
    with pytest.warns(MemoWarning, match="removed a damaged entry of fixture 'data'"):
        assert engine.get_or_compute(compute, lookup) == 2
    assert compute.calls == 1
    assert store.read("k" * 32) is not None  # stored again


class Unloadable:
    broken = False

    def __init__(self) -> None:
        self.x = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        if Unloadable.broken:
            raise RuntimeError("cannot be loaded")
        self.__dict__.update(state)


def test_an_entry_that_no_longer_loads_warns_and_is_recomputed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Memoized(store, RunStats())
    engine.get_or_compute(Counter(Unloadable()), lookup)
    monkeypatch.setattr(Unloadable, "broken", True)
    compute = Counter(3)
    with pytest.warns(MemoWarning, match="no longer loads .RuntimeError: cannot be loaded"):
        assert engine.get_or_compute(compute, lookup) == 3
    assert compute.calls == 1


def test_a_value_that_cannot_be_stored_warns_and_is_returned(store: Store) -> None:
    engine, lock = Memoized(store, RunStats()), threading.Lock()
    with pytest.warns(MemoWarning, match="the value of fixture 'data' could not be stored"):
        assert engine.get_or_compute(Counter(lock), lookup) is lock
    assert store.listing() == []
    assert engine.store is store  # the store itself is fine


def test_an_unusable_store_warns_once_and_values_are_computed(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    engine, compute = Memoized(Store(tmp_path / "file" / "store"), RunStats()), Counter()
    with pytest.warns(MemoWarning, match="cannot write to the store") as caught:
        for _ in range(3):
            assert engine.get_or_compute(compute, lookup) == 42
    assert (len(caught), compute.calls) == (1, 3)
    assert engine.store is None


def test_refresh_recomputes_entries_another_run_wrote(store: Store) -> None:
    engine = Memoized(store, RunStats())
    engine.get_or_compute(Counter(1), lambda: lookup(run="earlier"))
    assert engine.get_or_compute(Counter(2), lambda: lookup(run="this", refresh=True)) == 2
    assert engine.get_or_compute(Counter(3), lambda: lookup(run="this", refresh=True)) == 2


def test_never_serves_another_name_s_entry(store: Store) -> None:
    engine = Memoized(store, RunStats())
    engine.get_or_compute(Counter(1), lambda: lookup(name="one"))
    assert engine.get_or_compute(Counter(2), lambda: lookup(name="two")) == 2


def test_a_new_key_in_an_old_slot_counts_as_invalidated(store: Store) -> None:
    engine = Memoized(store, RunStats())
    engine.get_or_compute(Counter(1), lambda: lookup(key="a" * 32))
    engine.get_or_compute(Counter(2), lambda: lookup(key="b" * 32))
    assert engine.stats.of("data").invalidated == 1


def test_a_claim_holds_the_lock_while_the_caller_computes(store: Store) -> None:
    engine = Memoized(store, RunStats())
    with engine.claim(lookup()) as claim:
        assert claim.entry is None
        assert not store.lock("k" * 32).acquire(blocking=False)  # another process would wait
        claim.keep("value")
    assert store.lock("k" * 32).acquire(blocking=False)  # released
    with engine.claim(lookup()) as claim:
        assert claim.entry is not None and claim.entry.value == "value"


def test_not_memoized_computes_every_time_and_never_makes_a_key() -> None:
    engine, compute = NotMemoized(RunStats()), Counter()

    def no_key() -> Lookup:
        raise AssertionError("a key was computed")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [engine.get_or_compute(compute, no_key) for _ in range(2)] == [42, 42]
    assert compute.calls == 2 and engine.store is None
    with engine.claim(lookup()) as claim:
        assert claim.entry is None
        claim.keep("ignored")


# -- statistics --------------------------------------------------------------------


def test_worker_statistics_merge_into_the_main_process() -> None:
    main, worker = RunStats(), RunStats()
    main.of("a").hits = 1
    worker.of("a").hits, worker.of("b").misses = 2, 1
    worker.used_keys.add("k")
    main.merge(worker.as_dict())
    assert (main.of("a").hits, main.of("b").misses, main.used_keys) == (3, 1, {"k"})
    assert main.summary_line(None, ".") == (
        "memo: 3 hits (0.0 s saved), 1 miss (0.0 s computed), 0 invalidated"
    )


# -- store location and CPUs ------------------------------------------------------


def test_the_local_store_directory(tmp_path: Path) -> None:
    assert local_directory(tmp_path, None) == tmp_path / DEFAULT_DIRECTORY
    assert local_directory(tmp_path, "cache/memo") == tmp_path / "cache" / "memo"
    assert local_directory(tmp_path, "/abs/memo") == Path("/abs/memo")
    assert local_directory(tmp_path, "s3://bucket/x") == tmp_path / DEFAULT_DIRECTORY
    assert Store(local_directory(tmp_path, None)).base == tmp_path / DEFAULT_DIRECTORY / LAYOUT


def test_a_cgroup_quota_limits_the_usable_cpus(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("250000 100000\n")
    assert cgroup_quota(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert cgroup_quota(cpu_max) is None
    assert cgroup_quota(tmp_path / "missing") is None
    assert usable_cpus() >= 1


def test_removing_an_entry_removes_its_lock_file_unless_it_is_held(store: Store) -> None:
    # Before, every key ever computed left its lock file under locks/ for good.
    engine = Memoized(store, RunStats())
    for key in ("a" * 32, "b" * 32, "c" * 32):
        engine.get_or_compute(Counter(key), lambda key=key: lookup(key=key))  # type: ignore[misc]
    locks = store.base / "locks"
    assert len(list(locks.iterdir())) == 3
    held = store.lock("b" * 32)
    held.acquire()
    store.remove("a" * 32)
    store.remove("b" * 32)  # held here: someone is computing it again
    assert sorted(path.name for path in locks.iterdir()) == ["b" * 32 + ".lock", "c" * 32 + ".lock"]
    assert not store.lock("b" * 32).acquire(blocking=False)  # still the one lock
    held.release()
    store.prune(used_keys=set(), used_slots=set(), everything=True)
    assert list(locks.iterdir()) == []


def test_a_lock_file_removed_while_waited_on_still_lets_one_holder_in(store: Store) -> None:
    # Before (with filelock 3.x, which pyproject allows), a process waiting on a lock file
    # that was removed woke up holding it while a newcomer held the new file at its path:
    # both computed, and wrote, the entry at once.
    key = "d" * 32
    first = store.lock(key)
    assert first.acquire()
    waiter = store.lock(key)
    holding = threading.Event()

    def wait_for_the_lock() -> None:
        waiter.acquire()
        holding.set()

    thread = threading.Thread(target=wait_for_the_lock)
    thread.start()
    time.sleep(0.2)  # the waiter has opened the file and waits on it
    (store.base / "locks" / f"{key}.lock").unlink()  # as prune does once it is released
    newcomer = store.lock(key)
    assert newcomer.acquire(blocking=False)  # the new file: no one holds it yet
    first.release()
    assert not holding.wait(0.5)  # the waiter now waits on the newcomer's file
    newcomer.release()
    assert holding.wait(10)
    thread.join()
    assert not store.lock(key).acquire(blocking=False)
    waiter.release()


def test_prune_removes_only_lock_files_the_store_made(store: Store, tmp_path: Path) -> None:
    # Before, prune removed every unheld *.lock in locks/, also through a symbolic link to
    # a directory others keep files in, and opened FIFOs found there.
    engine = Memoized(store, RunStats())
    engine.get_or_compute(Counter("e" * 32), lambda: lookup(key="e" * 32))
    locks = store.base / "locks"
    (locks / "build.lock").write_text("someone else's")
    os.mkfifo(locks / ("f" * 32 + ".lock"))
    store.remove("e" * 32)
    store.prune(used_keys=set(), used_slots=set(), everything=True)
    assert sorted(path.name for path in locks.iterdir()) == ["build.lock", "f" * 32 + ".lock"]

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / ("a" * 32 + ".lock")).write_text("")
    shutil.rmtree(locks)
    locks.symlink_to(shared)
    store.prune(used_keys=set(), used_slots=set(), everything=True)
    assert [path.name for path in shared.iterdir()] == ["a" * 32 + ".lock"]


def test_two_removers_of_one_lock_file_never_remove_a_new_holders_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, a remover that opened the old lock file, then took it once another remover
    # had removed it, removed the path: the lock file a new holder had made meanwhile.
    import fcntl

    key = "a" * 32
    leftover = store.lock(key)
    assert leftover.acquire()
    leftover.release()
    flock, opened, go_on = fcntl.flock, threading.Event(), threading.Event()

    def flock_after_the_others(descriptor: int, operation: int) -> None:
        if threading.current_thread().name == "late remover":
            opened.set()
            go_on.wait(10)
        flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_others)
    late = threading.Thread(target=store._remove_unheld_lock, args=(key,), name="late remover")
    late.start()
    assert opened.wait(10)
    Store(store.root)._remove_unheld_lock(key)  # the other remover
    holder = store.lock(key)
    assert holder.acquire()  # computing the value, on a new lock file
    go_on.set()
    late.join()
    assert not Store(store.root).lock(key).acquire(blocking=False)
    holder.release()


def test_clearing_the_store_keeps_the_lock_of_a_value_being_computed(store: Store) -> None:
    # Before, --memo-clear removed every lock file: a run starting then took a new lock
    # and computed the value beside the run holding the old one.
    held = store.lock("b" * 32)
    assert held.acquire()
    other = store.lock("c" * 32)  # another, its value computed
    assert other.acquire()
    other.release()
    store.clear()
    assert [path.name for path in (store.base / "locks").iterdir()] == ["b" * 32 + ".lock"]
    assert not store.lock("b" * 32).acquire(blocking=False)
    held.release()


def test_a_hit_on_an_entry_removed_meanwhile_leaves_the_store_writable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, counting the hit of an entry another run's prune had just removed raised
    # FileNotFoundError, and the run used the store read-only from then on.
    Memoized(store, RunStats()).get_or_compute(Counter(), lookup)
    mine = Store(store.root)
    engine = Memoized(mine, RunStats())
    read = Memoized._read

    def read_then_pruned_elsewhere(self: Memoized, store: Store, found: Lookup) -> Any:
        entry = read(self, store, found)
        Store(store.root).remove(found.key)
        return entry

    monkeypatch.setattr(Memoized, "_read", read_then_pruned_elsewhere)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.get_or_compute(Counter(), lookup) == 42
    assert not mine.read_only


def test_a_child_forked_while_a_lock_is_held_does_not_hold_it(store: Store) -> None:
    # Before, a fixture that forked while its value was computed left the child holding
    # the key's lock: others waited for the child to exit, not for the value.
    held = store.lock("d" * 32)
    assert held.acquire()
    started, ready = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(ready, b"x")  # past fork(): what it does in the child is done
        time.sleep(30)
        os._exit(0)
    try:
        os.close(ready)
        assert os.read(started, 1) == b"x"
        os.close(started)
        held.release()
        assert store.lock("d" * 32).acquire(blocking=False)
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
