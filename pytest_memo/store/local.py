"""The on-disk store: entries keyed by content hash, an index, per-key locks, eviction.

Layout under the store directory::

    CACHEDIR.TAG, .gitignore
    v1/entries/ab/abcdef....memo   one file per entry: its metadata and its value, written
                                    atomically by :func:`pytest_memo.dump`
    v1/locks/abcdef....lock         single flight: whoever holds it computes the entry
    v1/index.sqlite                 listing, statistics and eviction (WAL: many processes)

An entry file is self-contained and self-checking; the index only speeds up listing and
eviction, and a missing index row is recreated from the file the next time it is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pytest_memo.core.errors import CorruptFileError
from pytest_memo.core.files import write_atomically
from pytest_memo.store.location import LAYOUT

if TYPE_CHECKING:
    import sqlite3

    import filelock

__all__ = ["Entry", "EntryInfo", "Store"]

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by pytest-memo.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    slot TEXT NOT NULL,
    fixture TEXT NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_slot ON entries (slot);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
"""


@dataclass(frozen=True)
class EntryInfo:
    """What is known about an entry besides its value.

    ``slot`` names the place the entry fills (fixture identity and parameter) whatever the
    code version: a new key in an old slot means the old entry was invalidated.
    """

    fixture: str
    source: str
    slot: str
    seconds: float
    created: float


@dataclass(frozen=True)
class Entry:
    key: str
    info: EntryInfo
    value: Any


@dataclass(frozen=True)
class Listing:
    key: str
    slot: str
    fixture: str
    source: str
    created: float
    last_used: float
    hits: int
    size: int
    seconds: float


class Store:
    """A directory of memoized values.  Every method is safe to call from several processes."""

    def __init__(self, root: Path, secret: bytes | None = None) -> None:
        self.root = root
        # With a secret, entries are signed (HMAC-SHA256 over the key and the file) and an
        # entry without a valid signature is never unpickled: loading a pickle runs code.
        self.secret = secret
        self.base = root / LAYOUT
        self._local = threading.local()
        # Every index connection this object opened, with the process that opened it:
        # close() closes this process's own (never a parent's, inherited by a fork).
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._generation = 0  # bumped by close(): threads then open new connections
        self._pending_hits: dict[str, int] = {}
        self._pending_lock = threading.Lock()
        self._verified: set[tuple[int, int, int]] = set()

    # -- paths ----------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        return self.base / "entries" / key[:2] / f"{key}.memo"

    def _lock_path(self, key: str) -> Path:
        return self.base / "locks" / f"{key}.lock"

    def prepare(self) -> None:
        """Create the directory with its markers; raises OSError if it cannot be written."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "locks").mkdir(exist_ok=True)
        mark_cache_directory(self.root)

    # -- entries --------------------------------------------------------------

    def read(self, key: str, mmap: bool = False) -> Entry | None:
        """The entry for ``key``, or None if there is none.

        Raises CorruptFileError for a damaged entry, and for an entry whose signature is
        missing or wrong when the store has a secret; the caller decides what to do.
        """
        from pytest_memo.core.serialize import load  # here: it imports numpy

        path = self.entry_path(key)
        try:
            file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with file:
            # Checks that read the whole file run once per process for each file: memory-
            # mapped data (which load skips) and the signature. Later hits cost nothing.
            first = self._first_sight(file)
            if first and self.secret is not None:
                self._check_signature(key, path, file)
                file.seek(0)
            verify = True if mmap and first else None
            info, value = load(file, mmap_mode="r" if mmap else None, verify=verify)
        if not isinstance(info, dict):
            raise CorruptFileError(f"{path}: not a pytest-memo store entry")
        return Entry(key, EntryInfo(**info), value)

    def _first_sight(self, file: IO[bytes]) -> bool:
        status = os.fstat(file.fileno())
        seen = (status.st_dev, status.st_ino, status.st_mtime_ns)
        with self._pending_lock:
            first = seen not in self._verified
            self._verified.add(seen)
        return first

    def _signature(self, key: str, file: IO[bytes]) -> str:
        assert self.secret is not None
        mac = hmac.new(self.secret, key.encode(), hashlib.sha256)
        while block := file.read(1 << 20):
            mac.update(block)
        return mac.hexdigest()

    def _check_signature(self, key: str, path: Path, file: IO[bytes]) -> None:
        try:
            expected = path.with_suffix(".sig").read_text().strip()
        except FileNotFoundError:
            raise CorruptFileError(
                f"{path}: not signed, and PYTEST_MEMO_SECRET is set: it was not written with "
                "this secret, so it is not loaded"
            ) from None
        if not hmac.compare_digest(expected, self._signature(key, file)):
            raise CorruptFileError(
                f"{path}: its signature does not match PYTEST_MEMO_SECRET (signed with another "
                "secret, or modified since): it is not loaded"
            )

    def write(self, key: str, info: EntryInfo, value: Any, compress: object = None) -> int:
        """Store ``value`` atomically (and its signature, with a secret); returns its size."""
        from pytest_memo.core.serialize import dump  # here: it imports numpy

        path = self.entry_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        size = dump((asdict(info), value), path, compress=compress)
        if self.secret is not None:
            with open(path, "rb") as file:
                write_atomically(path.with_suffix(".sig"), self._signature(key, file))
        self._index_insert(key, info, size)
        return size

    def remove(self, key: str) -> None:
        self.entry_path(key).unlink(missing_ok=True)
        self.entry_path(key).with_suffix(".sig").unlink(missing_ok=True)
        self.entry_path(key).with_suffix(".parts").unlink(missing_ok=True)  # see explain.py
        with self._index() as index:
            index.execute("DELETE FROM entries WHERE key = ?", (key,))

    def created_before(self, key: str, moment: float) -> bool:
        """True if the entry exists and its file was written before ``moment``."""
        try:
            return self.entry_path(key).stat().st_mtime < moment
        except FileNotFoundError:
            return False

    def lock(self, key: str) -> filelock.BaseFileLock:
        """The key's lock: whoever holds it computes the entry, the others wait for it.

        It is an OS file lock, released by the kernel if its holder dies, so a waiter
        takes over from a crashed process instead of waiting forever.
        """
        import filelock  # here: importing it costs 30 ms at pytest start-up otherwise

        return filelock.FileLock(self._lock_path(key))

    # -- index ----------------------------------------------------------------

    @contextlib.contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        """A transaction on the index; SQLite errors come out as OSError, like file errors."""
        import sqlite3  # here, not at the top: a run without memoized fixtures never needs it

        try:
            connection = self._connection()
            with connection:
                yield connection
        except sqlite3.Error as error:
            raise OSError(f"store index {self.base / 'index.sqlite'}: {error}") from error

    def _connection(self) -> sqlite3.Connection:
        # One connection per process and thread: SQLite connections survive neither a
        # fork nor sharing between threads.
        owner = (os.getpid(), threading.get_ident(), self._generation)
        if getattr(self._local, "owner", None) != owner:
            # check_same_thread=False only so that close() can close the connections of
            # threads that have finished; each thread still uses its own.
            import sqlite3

            path = self.base / "index.sqlite"
            connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
            with self._connections_lock:
                self._connections.append((os.getpid(), connection))
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            self._local.connection, self._local.owner = connection, owner
        connection_: sqlite3.Connection = self._local.connection
        return connection_

    def close(self) -> None:
        """Close the index connections this process opened; a later use opens new ones.

        Left to the garbage collector, they would warn (ResourceWarning, Python 3.13+)
        inside whatever test happens to be running, an error under ``-W error``."""
        pid = os.getpid()
        with self._connections_lock:
            mine = [connection for owner, connection in self._connections if owner == pid]
            self._connections = [item for item in self._connections if item[0] != pid]
            self._generation += 1
        if not mine:
            return
        import sqlite3

        for connection in mine:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def _index_insert(self, key: str, info: EntryInfo, size: int) -> None:
        now = time.time()
        with self._index() as index:
            index.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (key, info.slot, info.fixture, info.source, info.created, now, size, info.seconds),
            )

    def has_other_in_slot(self, slot: str, key: str) -> bool:
        with self._index() as index:
            row = index.execute(
                "SELECT 1 FROM entries WHERE slot = ? AND key != ? LIMIT 1", (slot, key)
            ).fetchone()
        return row is not None

    def keys_in_slot(self, slot: str) -> list[tuple[str, float]]:
        """The keys of the entries in ``slot``, with the time each was created."""
        with self._index() as index:
            rows = index.execute("SELECT key, created FROM entries WHERE slot = ?", (slot,))
            return [(str(key), float(created)) for key, created in rows.fetchall()]

    def note_hit(self, entry: Entry) -> None:
        """Count a hit; written to the index in one transaction by :meth:`flush`."""
        with self._pending_lock:
            self._pending_hits[entry.key] = self._pending_hits.get(entry.key, 0) + 1
        if not self._has_row(entry.key):
            self._index_insert(entry.key, entry.info, self.entry_path(entry.key).stat().st_size)

    def _has_row(self, key: str) -> bool:
        with self._index() as index:
            return (
                index.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is not None
            )

    def flush(self) -> None:
        with self._pending_lock:
            hits, self._pending_hits = self._pending_hits, {}
        if not hits:
            return
        now = time.time()
        with self._index() as index:
            index.executemany(
                "UPDATE entries SET hits = hits + ?, last_used = ? WHERE key = ?",
                [(count, now, key) for key, count in hits.items()],
            )

    def listing(self) -> list[Listing]:
        if not (self.base / "index.sqlite").exists():
            return []
        with self._index() as index:
            rows = index.execute(
                "SELECT key, slot, fixture, source, created, last_used, hits, size, seconds "
                "FROM entries ORDER BY fixture, last_used DESC"
            ).fetchall()
        return [Listing(*row) for row in rows]

    def total_size(self) -> int:
        return sum(entry.size for entry in self.listing())

    # -- housekeeping ---------------------------------------------------------

    def clear(self, fixture: str | None = None) -> int:
        """Remove every entry, or only the entries of one fixture; returns how many."""
        if fixture is None:
            count = len(self.listing())
            for name in ("entries", "locks"):
                shutil.rmtree(self.base / name, ignore_errors=True)
            for suffix in ("", "-wal", "-shm"):
                (self.base / f"index.sqlite{suffix}").unlink(missing_ok=True)
            self._local = threading.local()
            return count
        doomed = [entry.key for entry in self.listing() if entry.fixture == fixture]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def prune(self, used_keys: set[str], used_slots: set[str], everything: bool) -> int:
        """Remove entries this run did not use; returns how many.

        Always those superseded in a slot this run filled with another key (an edit made
        them unreachable); with ``everything`` (a complete run) all unused ones.
        """
        doomed = [
            entry.key
            for entry in self.listing()
            if entry.key not in used_keys and (everything or entry.slot in used_slots)
        ]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def evict(self, max_size: int) -> list[str]:
        """Remove least recently used entries until the store holds at most ``max_size`` bytes."""
        entries = sorted(self.listing(), key=lambda entry: entry.last_used)
        total = sum(entry.size for entry in entries)
        evicted = []
        for entry in entries:
            if total <= max_size:
                break
            self.remove(entry.key)
            total -= entry.size
            evicted.append(entry.key)
        return evicted


def mark_cache_directory(directory: Path) -> None:
    """Tell backup tools (CACHEDIR.TAG) and git (.gitignore) to leave ``directory`` out."""
    tag = directory / "CACHEDIR.TAG"
    if not tag.exists():
        tag.write_text(CACHEDIR_TAG)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# created by pytest-memo\n*\n")


def secret_from_environment() -> bytes | None:
    """The signing secret in ``PYTEST_MEMO_SECRET``, if set."""
    secret = os.environ.get("PYTEST_MEMO_SECRET")
    return secret.encode() if secret else None
