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
import inspect
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_memo.core.errors import CorruptFileError, MemoWarning
from pytest_memo.memoize import explain, reads
from pytest_memo.memoize.progress import Progress
from pytest_memo.memoize.stats import RunStats
from pytest_memo.store.local import Entry, EntryInfo, Store, UntrustedEntryError

if TYPE_CHECKING:
    from pytest_memo.store.locks import KeyLock

__all__ = ["Claim", "Lookup", "Memoized", "NotMemoized", "code_location", "warn"]


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
    # The named parts of the key (see explain.py), computed only when the value is.
    parts: Callable[[], explain.Parts] | None = field(default=None, compare=False)
    max_age: float | None = None  # seconds: older entries are recomputed
    # The user's code (file, first line): where warnings about this value point.
    where: tuple[str, int] | None = field(default=None, compare=False)


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
        # With a rootdir, the files a value reads under it are recorded and checked on hits.
        self.rootdir = root
        self._reasons: dict[str, str] = {}  # key -> why its own entry was not used
        self.progress: Progress | None = None  # the live line of long computations
        # Manifests read, by key and entry creation time: a function-scoped fixture hit by
        # every test reads its manifest once, and checks its files' status every time.
        self._manifests: dict[tuple[str, float], explain.Manifest | None] = {}
        self._contents: dict[str, str] = {}  # key -> digest of its value (early cutoff)

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

    def contains(self, lookup: Lookup) -> bool:
        """Whether ``lookup`` would load a stored value (without loading it)."""
        store = self._usable_store()
        if store is None:
            return False
        try:
            written = store.entry_path(lookup.key).stat().st_mtime
        except OSError:
            return False
        if lookup.max_age is not None and time.time() - written > lookup.max_age:
            return False
        manifest = explain.read_manifest(store, lookup.key) if self.rootdir else None
        if manifest is not None and self.rootdir is not None and manifest.files:
            return reads.check_files(self.rootdir, manifest.files)[0] is None
        return True

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
                yield from self._compute(store, lookup)
                return
            try:
                entry = self._read(store, lookup)  # computed by another process meanwhile?
                if entry is None:
                    yield from self._compute(store, lookup)
                    return
            finally:
                lock.release()
        self._hit(store, lookup, entry)
        yield Claim(entry, None)

    def _compute(self, store: Store, lookup: Lookup) -> Iterator[Claim]:
        """A claim to compute the value; what the caller keeps is stored (and counted)."""
        with self._computing(store, lookup) as (parts, recorder):
            yield Claim(
                None,
                lambda value, seconds: self._keep(store, lookup, value, seconds, parts, recorder),
            )

    def _lock(self, store: Store, key: str) -> KeyLock | None:
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

    @contextlib.contextmanager
    def _computing(
        self, store: Store, lookup: Lookup
    ) -> Iterator[tuple[explain.Parts, reads.Recorder | None]]:
        """While the value is computed: say why, and record the files it reads."""
        reason = self._reasons.pop(lookup.key, None)
        try:
            parts = lookup.parts() if lookup.parts is not None else {}
        except Exception:  # a part that cannot be described must not fail the test
            parts = {}
        try:
            why = explain.explanation(store, lookup.slot, lookup.key, parts, reason)
        except OSError:
            why = "the store index cannot be read"
        self.stats.explain(lookup.name, why)
        with contextlib.ExitStack() as stack:
            if self.progress is not None:
                stack.enter_context(self.progress.computing(lookup.name, why))
            if self.rootdir is None:
                yield parts, None
                return
            yield parts, stack.enter_context(reads.recording(self.rootdir, store.root))

    def _stale(self, store: Store, lookup: Lookup, entry: Entry) -> str | None:
        """Why a stored entry may not be used although its key matches, or None."""
        if lookup.max_age is not None and time.time() - entry.info.created > lookup.max_age:
            return f"older than max_age ({explain.age(time.time() - entry.info.created)})"
        if self.rootdir is None:
            return None
        known = (lookup.key, entry.info.created)
        manifest = self._manifests.get(known)
        if manifest is None:
            manifest = explain.read_manifest(store, lookup.key)
            # Kept only when it belongs to this entry: read while another process was
            # between writing an entry and its manifest, it is the previous entry's, and
            # kept it made the retry under the lock recompute a value just computed.
            if manifest is not None and abs(manifest.created - entry.info.created) <= 1e-3:
                self._manifests[known] = manifest
        if manifest is not None and manifest.content is not None:
            self._contents[lookup.key] = manifest.content
        else:  # perhaps rewritten since: hash the value again if asked
            self._contents.pop(lookup.key, None)
        if manifest is None or not manifest.files:
            return None
        if abs(manifest.created - entry.info.created) > 1e-3:
            return "its entry was rewritten meanwhile"
        changed, touched = reads.check_files(self.rootdir, manifest.files)
        if changed is not None:
            return f"{changed} changed"
        if touched and not store.read_only:  # same content, new time: store sizes and times
            with contextlib.suppress(OSError):
                explain.write_manifest(store, lookup.key, manifest)
        reads.note_files(manifest.files, self.rootdir)
        return None

    def content_digest(self, key: str, value: Callable[[], str]) -> str:
        """The digest of the value stored under ``key``: from its manifest, or ``value()``
        (hashing it), which is then kept in the manifest for later runs."""
        known = self._contents.get(key)
        if known is not None:
            return known
        digest = self._contents[key] = value()
        store = self.store
        if store is not None:
            manifest = explain.read_manifest(store, key)
            if manifest is not None and not store.read_only:
                manifest.content = digest
                with contextlib.suppress(OSError):
                    explain.write_manifest(store, key, manifest)
        return digest

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
            self._discard(
                store,
                lookup,
                f"refused the stored entry of {lookup.what} and recomputed it: {error}",
                f"refused the stored entry of {lookup.what} and recomputed it (the entry "
                f"stays in the read-only store): {error}",
            )
            return None
        except CorruptFileError as error:
            self._discard(
                store,
                lookup,
                f"removed a damaged entry of {lookup.what} and recomputed it: {error}",
                f"recomputed a damaged entry of {lookup.what}, which stays in the read-only "
                f"store: {error}",
            )
            return None
        except OSError as error:
            warn(f"cannot read the store entry of {lookup.what}: {error}", lookup.where)
            return None
        except Exception as error:  # unpickling runs user code (a class that changed shape)
            problem = (
                f"an entry of {lookup.what} that no longer loads ({type(error).__name__}: {error})"
            )
            self._discard(
                store,
                lookup,
                f"removed {problem} and recomputed it",
                f"recomputed {problem}, which stays in the read-only store",
            )
            return None
        if entry is not None and entry.info.fixture != lookup.name:
            return None  # not ours: never serve another fixture's value
        if entry is not None and lookup.refresh and entry.info.run != lookup.run:
            # Decided by the run's identity, not by comparing the file's time with the
            # clock: a cache restored with timestamps from the future is refreshed too.
            self._reasons[lookup.key] = "recomputed for --memo-refresh"
            return None
        if entry is not None and (reason := self._stale(store, lookup, entry)) is not None:
            self._reasons[lookup.key] = reason
            return None
        return entry

    def _discard(self, store: Store, lookup: Lookup, removed: str, kept: str) -> None:
        """Remove an entry that cannot be served (message ``removed``); in a read-only
        store it stays (message ``kept``)."""
        if not store.read_only:
            try:
                store.remove(lookup.key)
            except OSError as error:
                self._fail(store, error)
            else:
                warn(removed, lookup.where)
                return
        warn(kept, lookup.where)

    def _hit(self, store: Store, lookup: Lookup, entry: Entry) -> None:
        self.stats.hit(lookup.key, lookup.name, entry.info.seconds)
        try:
            store.note_hit(entry)
        except OSError as error:
            self._fail(store, error)

    def _keep(
        self,
        store: Store,
        lookup: Lookup,
        value: Any,
        seconds: float,
        parts: explain.Parts,
        recorder: reads.Recorder | None,
    ) -> None:
        self.stats.miss(lookup.name, seconds)
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
                f"{error}); the test uses the computed value and it is not memoized",
                lookup.where,
            )
            return
        if invalidated:
            self.stats.invalidation(lookup.name)
        self._contents.pop(lookup.key, None)  # a new value under this key
        files = {}
        if recorder is not None and self.rootdir is not None:
            files = {path: reads.file_state(self.rootdir, path) for path in sorted(recorder.files)}
        manifest = explain.Manifest({"created": info.created, "parts": parts, "files": files})
        with contextlib.suppress(OSError):  # the entry stands without it
            explain.write_manifest(store, lookup.key, manifest)

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

    def contains(self, lookup: Lookup) -> bool:
        return False

    @contextlib.contextmanager
    def claim(self, lookup: Lookup) -> Iterator[Claim]:
        yield Claim(None, None)


_REGISTRY: dict[Any, Any] = {}


def warn(message: str, where: tuple[str, int] | None = None) -> None:
    """A MemoWarning; with ``where`` (a file and line of the user's code: the fixture or
    function concerned) the warning points there rather than into pytest-memo."""
    warning = MemoWarning(f"pytest-memo: {message}")
    if where is None:
        warnings.warn(warning, stacklevel=2)
    else:
        # With a registry, as warnings.warn has: the same warning from the same place is
        # shown once (a retry under the key's lock must not repeat it).
        warnings.warn_explicit(warning, MemoWarning, where[0], where[1], registry=_REGISTRY)


def code_location(function: Any) -> tuple[str, int] | None:
    """The file and first line of a function (under its decorators), for :func:`warn`."""
    function = getattr(function, "__func__", function)
    with contextlib.suppress(ValueError):  # a wrapper loop
        function = inspect.unwrap(function)
    code = getattr(function, "__code__", None)
    return None if code is None else (code.co_filename, code.co_firstlineno)
