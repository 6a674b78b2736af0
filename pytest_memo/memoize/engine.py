"""Get or compute: the one path by which memoized fixtures and ``pytest_memo.cache`` use
the store.  It knows nothing of pytest; callers compute keys and hand in a :class:`Lookup`.

Read the entry (a damaged one, or one that no longer loads, is removed and recomputed);
on a miss take the key's lock and read again (another process may have computed it while
we waited); compute; write (a value that cannot be stored is still returned); count hits
and misses in the run's :class:`RunStats` and hits in the store's index.  A store that
cannot be used gives one warning, after which values are computed normally.

:class:`Memoized` does all this; :class:`NotMemoized` (``--memo-off``) has the same
interface and only computes, as joblib's ``MemorizedFunc`` and ``NotMemorizedFunc``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_memo.core.errors import CorruptFileError, MemoWarning
from pytest_memo.memoize.stats import RunStats
from pytest_memo.store.local import Entry, EntryInfo, Store, UntrustedEntryError

if TYPE_CHECKING:
    import filelock

__all__ = ["Claim", "Lookup", "Memoized", "NotMemoized", "warn"]


@dataclass(frozen=True)
class Lookup:
    """One memoized value to get or compute."""

    key: str
    name: str  # the fixture's name or the function's identity: entries and statistics
    what: str  # for messages: "fixture 'data'", "function helper:slow"
    slot: str  # the place the entry fills whatever the code version (see EntryInfo)
    source: str  # where the code is defined
    mmap: bool = False
    compress: object = None
    run: str = ""  # the run computing it: stored in the entry's info
    refresh: bool = False  # --memo-refresh: entries another run wrote are recomputed


class Claim:
    """What :meth:`Memoized.claim` found: a stored ``entry``, or the right (and duty) to
    compute the value and :meth:`keep` it."""

    def __init__(self, entry: Entry | None, keep: Callable[[Any, float], None] | None) -> None:
        self.entry = entry
        self._keep = keep
        self._started = time.perf_counter()

    def keep(self, value: Any) -> None:
        """Store the value just computed (nothing, when the store is not used)."""
        if self._keep is not None:
            self._keep(value, time.perf_counter() - self._started)


class Memoized:
    """Values kept in ``store``, counted in ``stats``."""

    def __init__(
        self, store: Store, stats: RunStats, root: Path | None = None, project: str = ""
    ) -> None:
        self._store = store
        self.root = root  # the rootdir: paths inside it are stored relative to it
        self.project = project  # recorded in the entries it writes (see --memo-prune)
        self.stats = stats
        self._broken = False
        self._prepared = False

    @property
    def store(self) -> Store | None:
        """The store, or None once it turned out not to be usable."""
        return None if self._broken else self._store

    def unusable(self) -> None:
        """The store cannot be used and that was already reported: compute normally."""
        self._broken = True

    def get_or_compute(self, compute: Callable[[], Any], lookup: Callable[[], Lookup]) -> Any:
        """The stored value, or ``compute()`` stored; ``lookup`` says which value it is
        (called only when the store is used: computing a key costs time)."""
        with self.claim(lookup()) as claim:
            if claim.entry is not None:
                return claim.entry.value
            value = compute()
            claim.keep(value)
            return value

    @contextlib.contextmanager
    def claim(self, lookup: Lookup) -> Iterator[Claim]:
        """The stored entry, or a claim to compute it, holding the key's lock until the
        block ends: whoever else needs the value waits for it instead of computing it too."""
        self.stats.used_keys.add(lookup.key)
        self.stats.of(lookup.name)
        store = self._usable_store()
        if store is None:
            yield Claim(None, None)
            return
        entry = self._read(store, lookup)
        if entry is None:
            lock = self._lock(store, lookup.key)
            if lock is None:  # a read-only store: computed, counted, not stored
                yield Claim(None, lambda value, seconds: self._keep(store, lookup, value, seconds))
                return
            try:
                entry = self._read(store, lookup)  # computed by another process meanwhile?
                if entry is None:
                    yield Claim(
                        None, lambda value, seconds: self._keep(store, lookup, value, seconds)
                    )
                    return
            finally:
                lock.release()
        self._hit(store, lookup, entry)
        yield Claim(entry, None)

    def _lock(self, store: Store, key: str) -> filelock.BaseFileLock | None:
        """The key's lock, held; None in a read-only store, which takes no lock files."""
        if store.read_only:
            return None
        try:
            lock = store.lock(key)
            lock.acquire()
        except OSError as error:  # the lock file cannot be created: the store is read-only
            self._fail(store, error)
            return None
        return lock

    def _usable_store(self) -> Store | None:
        # Prepared once per process before the first lookup, so that a store that cannot
        # be created gives one warning, not one per failing read, lock and write.
        store = self.store
        if store is not None and not self._prepared:
            self._prepared = True
            try:
                store.prepare()
            except OSError as error:
                self._give_up(error)
                return None
        return store

    def _read(self, store: Store, lookup: Lookup) -> Entry | None:
        from pytest_memo.core.serialize import rooted  # here: it imports numpy

        try:
            with rooted(self.root):
                entry = store.read(lookup.key, mmap=lookup.mmap)
        except UntrustedEntryError as error:
            # Signed by no one trusted (or not at all): never loaded; this job's own
            # value replaces it if it may sign.
            warn(f"refused the stored entry of {lookup.what} and recomputed it: {error}")
            store.remove(lookup.key)
            return None
        except CorruptFileError as error:
            self._discard(store, lookup, f"a damaged entry of {lookup.what}", f": {error}")
            return None
        except OSError as error:
            warn(f"cannot read the store entry of {lookup.what}: {error}")
            return None
        except Exception as error:  # unpickling runs user code (a class that changed shape)
            self._discard(
                store,
                lookup,
                f"an entry of {lookup.what} that no longer loads ({type(error).__name__}: {error})",
            )
            return None
        if entry is not None and entry.info.fixture != lookup.name:
            return None  # not ours: never serve another fixture's value
        if entry is not None and lookup.refresh and entry.info.run != lookup.run:
            # Decided by the run's identity, not by comparing the file's time with the
            # clock: a cache restored with timestamps from the future is refreshed too.
            return None
        return entry

    def _discard(self, store: Store, lookup: Lookup, what: str, detail: str = "") -> None:
        """Remove an entry that cannot be served; in a read-only store it stays."""
        if not store.read_only:
            try:
                store.remove(lookup.key)
            except OSError as error:
                self._fail(store, error)
            else:
                warn(f"removed {what} and recomputed it{detail}")
                return
        warn(f"recomputed {what}, which stays in the read-only store{detail}")

    def _hit(self, store: Store, lookup: Lookup, entry: Entry) -> None:
        stats = self.stats.of(lookup.name)
        stats.hits += 1
        stats.seconds_saved += entry.info.seconds
        try:
            store.note_hit(entry)
        except OSError as error:
            self._fail(store, error)

    def _keep(self, store: Store, lookup: Lookup, value: Any, seconds: float) -> None:
        stats = self.stats.of(lookup.name)
        stats.misses += 1
        stats.seconds_computed += seconds
        if store.read_only:
            return
        info = EntryInfo(
            fixture=lookup.name,
            source=lookup.source,
            slot=lookup.slot,
            seconds=seconds,
            created=time.time(),
            run=lookup.run,
            project=self.project,
        )
        try:
            invalidated = store.has_other_in_slot(info.slot, lookup.key, self.project)
            from pytest_memo.core.serialize import rooted  # here: it imports numpy

            with rooted(self.root):
                store.write(lookup.key, info, value, compress=lookup.compress)
        except OSError as error:
            self._fail(store, error)
            return
        except Exception as error:  # pickling runs user code: any error is possible
            warn(
                f"the value of {lookup.what} could not be stored ({type(error).__name__}: "
                f"{error}); the test uses the computed value and it is not memoized"
            )
            return
        if invalidated:
            stats.invalidated += 1

    def _fail(self, store: Store, error: OSError) -> None:
        """Writing failed: the store is used read-only from now on (one warning)."""
        store.became_read_only(error)

    def _give_up(self, error: OSError) -> None:
        if not self._broken:
            warn(
                f"cannot write to the store in {self._store.root} ({error}); fixtures are "
                "computed normally for the rest of this run"
            )
        self._broken = True


class NotMemoized:
    """``--memo-off``: the interface of :class:`Memoized`, and every value is computed."""

    store: Store | None = None

    def __init__(self, stats: RunStats) -> None:
        self.stats = stats

    def unusable(self) -> None:
        pass

    def get_or_compute(self, compute: Callable[[], Any], lookup: Callable[[], Lookup]) -> Any:
        return compute()

    @contextlib.contextmanager
    def claim(self, lookup: Lookup) -> Iterator[Claim]:
        yield Claim(None, None)


def warn(message: str) -> None:
    warnings.warn(MemoWarning(f"pytest-memo: {message}"), stacklevel=2)
