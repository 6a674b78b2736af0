"""The on-disk store: entries keyed by content hash, an index, per-key locks, eviction.

Layout under the store directory::

    CACHEDIR.TAG, .gitignore
    v1/entries/ab/abcdef....memo   one file per entry: its metadata and its value, written
                                    atomically by :func:`pytest_memo.dump`
    v1/locks/abcdef....lock         single flight: whoever holds it computes the entry
    v1/index.sqlite                 listing, statistics and eviction (WAL: many processes)
    v1/tmp/abcdef....host.pid.X.tmp  entries being written, named after their writer

An entry file is self-contained and self-checking; the index only speeds up listing and
eviction, and is derived data: a missing row is recreated from the file the next time it
is used, and a damaged index is rebuilt from the entry files.  The store repairs what it
can of its own layout (a file where a directory belongs is moved aside, a FIFO or a
directory where an entry belongs is removed) and removes the temporary files of writers
that were killed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import stat
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, TypeVar

from pytest_memo.core.errors import CorruptFileError, MemoWarning
from pytest_memo.core.files import (
    NotRegularFileError,
    describe_mode,
    open_regular,
    temporary_in,
    write_atomically,
    writer_gone,
)
from pytest_memo.store.location import LAYOUT
from pytest_memo.store.locks import KeyLock, file_lock, still_at
from pytest_memo.store.signing import Hasher, HmacSigning, Signing

if TYPE_CHECKING:
    import sqlite3

__all__ = ["Entry", "EntryInfo", "Store", "StoreRepairWarning", "UntrustedEntryError"]

T = TypeVar("T")

TEMPORARY = "tmp"
_LOCK_NAME = re.compile(r"([0-9a-f]{32})\.lock")  # locks/<key>.lock
# PRAGMA user_version of an index that lists every entry file (one built from them or
# kept up to date since): an index without it is filled from the entry files first.
INDEX_VERSION = 2
_COLUMNS = (
    "key",
    "slot",
    "fixture",
    "source",
    "created",
    "last_used",
    "hits",
    "size",
    "seconds",
    "project",
)
# An index of version 1 had no project column: it is made again from the entry files.
_COLUMNS_V1 = _COLUMNS[:-1]
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
    seconds REAL NOT NULL,
    project TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS entries_slot ON entries (slot);
CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used);
"""


# The errors of a store that cannot be written: permissions, a read-only filesystem.
READ_ONLY_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class StoreRepairWarning(UserWarning):
    """The store found damage (its index, its directories, an entry) and repaired it."""


class UntrustedEntryError(CorruptFileError):
    """An entry that is not signed by someone the store trusts: never unpickled."""


class _DamagedIndex(Exception):
    """The index file cannot be used as it is: it is rebuilt from the entry files."""


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
    run: str = ""  # the run that wrote it (--memo-refresh); "" in entries of older versions
    # The project that wrote it (see pytest_memo.store.location.project_identity): its
    # --memo-prune removes only its own entries from a store that projects share.
    project: str = ""


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
    project: str = ""


class Store:
    """A directory of memoized values.  Every method is safe to call from several processes."""

    def __init__(
        self,
        root: Path,
        secret: bytes | None = None,
        signing: Signing | None = None,
        read_only: bool = False,
    ) -> None:
        self.root = root
        # Read-only: entries are read and nothing is written (no entries, index, locks or
        # hit counts), on purpose (--memo-read-only) or because the store cannot be
        # written (see became_read_only).
        self.read_only = read_only
        self._read_only_reported = False
        # With a secret (HMAC-SHA256) or Ed25519 keys, entries are signed over their key and
        # file, and an entry without a valid signature is never unpickled: loading a pickle
        # runs code.  See pytest_memo.store.signing.
        self.signing: Signing | None = signing or (HmacSigning(secret) if secret else None)
        self.base = root / LAYOUT
        self._entries = self.base / "entries"
        self._local = threading.local()
        # Every index connection this object opened, with the process that opened it:
        # close() closes this process's own (never a parent's, inherited by a fork).
        self._connections: list[tuple[int, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._generation = 0  # bumped by close(): threads then open new connections
        self._pending_hits: dict[str, int] = {}
        self._pending_lock = threading.Lock()
        # Files whose memory-mapped arrays were checked (and, with a secret, whose whole
        # file was verified), by (device, inode, modification time): mapped data is only
        # read when used, so it is checked once per process, not on every hit.
        self._verified: set[tuple[int, int, int]] = set()
        self._reported: set[str] = set()
        self._slots: dict[str, list[tuple[str, float]]] | None = None  # see _scanned_slots

    # -- paths ----------------------------------------------------------------

    def entry_path(self, key: str, suffix: str = ".memo") -> Path:
        """The entry file of ``key``, or with another ``suffix`` a file that goes with it."""
        return self._entries.joinpath(key[:2], key + suffix)

    def _lock_path(self, key: str) -> Path:
        return self.base / "locks" / f"{key}.lock"

    @property
    def _index_path(self) -> Path:
        return self.base / "index.sqlite"

    def prepare(self) -> None:
        """Create the directory with its markers, repairing its layout and removing the
        temporary files of killed writers; raises OSError if it cannot be written.

        A store that exists but cannot be written (a CI cache restored read-only, a
        read-only mount, another user's store) is used read-only, with one warning."""
        if self.read_only:
            return
        try:
            self._prepare()
            entries = self.base / "entries"
            if not os.access(entries, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "cannot write to it", str(entries))
        except OSError as error:
            if error.errno not in READ_ONLY_ERRORS or not (self.base / "entries").is_dir():
                raise
            self.became_read_only(error)

    def became_read_only(self, error: OSError) -> None:
        """The store cannot be written: use it read-only from now on, and say so once."""
        self.read_only = True
        if not self._read_only_reported:
            self._read_only_reported = True
            warnings.warn(
                MemoWarning(
                    f"pytest-memo: cannot write to the store in {self.root} ({error}): it is "
                    "used read-only for the rest of this run (stored values are loaded, "
                    "the others computed and not stored)"
                ),
                stacklevel=3,
            )

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in (self.base, *(self.base / name for name in ("entries", "locks"))):
            self._directory(directory)
        self._directory(self.base / TEMPORARY)
        mark_cache_directory(self.root)
        count, size = self.remove_leftovers()
        if count:
            self._report(
                f"removed {count} temporary file{'s' * (count > 1)} ({size / 1e6:.1f} MB) "
                f"left by a writer that was killed in {self.base / TEMPORARY}"
            )

    def check_creatable(self) -> None:
        """Raise OSError if :meth:`prepare` could not make the store's directory: the
        nearest existing parent is not a directory, or this user cannot write to it."""
        parent = self.root
        while not parent.exists() and parent.parent != parent:
            parent = parent.parent
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(parent))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "cannot write to it", str(parent))

    def probe(self) -> None:
        """Check what can be checked without creating the store (a remote store: that its
        remote answers); a local store has nothing to check."""

    def _directory(self, directory: Path) -> None:
        """Make ``directory``; something else in its place is moved aside (with a warning)."""
        try:
            directory.mkdir(exist_ok=True)
            return
        except FileExistsError:
            if directory.is_dir():
                return
        aside = directory.with_name(f"{directory.name}.moved-aside-{time.time_ns()}")
        kind = describe_mode(directory.lstat().st_mode) if directory.is_symlink() else None
        os.replace(directory, aside)
        directory.mkdir()
        self._report(
            f"{directory} was {kind or 'a file'}, not a directory: moved it aside to "
            f"{aside.name} and made the directory again (remove {aside} if you do not need it)"
        )

    def _report(self, message: str) -> None:
        """One warning per process for each repair."""
        if message not in self._reported:
            self._reported.add(message)
            warnings.warn(StoreRepairWarning(f"pytest-memo: {message}"), stacklevel=3)

    @property
    def keeps_computed(self) -> bool:
        """Whether values computed here are stored: not by a job that can verify signed
        entries but not sign them (Ed25519 trusted keys without the signing key)."""
        return self.signing is None or self.signing.can_sign

    # -- entries --------------------------------------------------------------

    def _open_entry(self, path: Path) -> int | None:
        """A descriptor on the entry file, or None if there is none; never blocks."""
        try:
            return open_regular(path)
        except (FileNotFoundError, NotADirectoryError):
            return None  # NotADirectoryError: a file where entries/ab/ belongs; write repairs
        except NotRegularFileError as error:
            raise CorruptFileError(f"{path}: {error.kind} in the place of an entry") from None
        except OSError as error:
            # ENXIO (a socket), ELOOP: tell what is there rather than why it did not open
            with contextlib.suppress(OSError):
                mode = path.lstat().st_mode
                if not stat.S_ISREG(mode):
                    raise CorruptFileError(
                        f"{path}: {describe_mode(mode)} in the place of an entry"
                    ) from None
            raise error

    def read(self, key: str, mmap: bool = False) -> Entry | None:
        """The entry for ``key``, or None if there is none.

        Raises CorruptFileError for a damaged entry (or something that is not a file in
        its place), and for an entry whose signature is missing or wrong when the store
        has a secret; the caller decides what to do.
        """
        from pytest_memo.core.serialize import load  # here: it imports numpy

        path = self.entry_path(key)
        handle = self._open_entry(path)
        if handle is None:
            return None
        with open(handle, "rb", buffering=0) as file:
            file.name = str(path)  # for messages: not the descriptor number
            if self.signing is not None:
                info, value = self._load_verified(key, path, file, mmap)
            else:
                # Mapped arrays are checked once per process for each file (checking
                # reads the whole file, which mapping avoids); read data always is.
                verify = True if mmap and self._first_sight(file) else None
                info, value = load(file, mmap_mode="r" if mmap else None, verify=verify)
        if not isinstance(info, dict):
            raise CorruptFileError(f"{path}: not a pytest-memo store entry")
        try:
            return Entry(key, EntryInfo(**info), value)
        except TypeError:
            raise CorruptFileError(f"{path}: not a pytest-memo store entry") from None

    def _first_sight(self, file: IO[bytes]) -> bool:
        status = os.fstat(file.fileno())
        seen = (status.st_dev, status.st_ino, status.st_mtime_ns)
        with self._pending_lock:
            first = seen not in self._verified
            self._verified.add(seen)
        return first

    # -- signatures -----------------------------------------------------------
    #
    # A signature file holds the signature (an HMAC with PYTEST_MEMO_SECRET, Ed25519 with
    # keys: see pytest_memo.store.signing) of the key and the whole entry file and, for an
    # uncompressed entry, a second one of the parts that loading parses and unpickles
    # (everything but the array sections, which are memory-mapped).  What is unpickled
    # is always bytes held in memory that were verified on that very read: an entry
    # rewritten in place after it was verified is refused, whatever its inode and time.

    def _hasher(self, key: str, *parts: bytes | memoryview) -> Hasher:
        assert self.signing is not None
        hasher = self.signing.start(key)
        for part in parts:
            hasher.update(part)
        return hasher

    def _file_hasher(self, key: str, file: IO[bytes]) -> Hasher:
        hasher = self._hasher(key)
        file.seek(0)
        while block := file.read(1 << 20):
            hasher.update(block)
        return hasher

    def _head(self, file: BinaryIO, path: Path) -> tuple[int, int, bytes, bytes] | None:
        """(first array offset, metadata offset, the bytes before, the bytes from) of an
        uncompressed entry; None for a compressed one."""
        from pytest_memo.core.serialize import mappable_layout

        file.seek(0)
        layout = mappable_layout(file, str(path))
        if layout is None:
            return None
        first, meta = layout
        return first, meta, os.pread(file.fileno(), first, 0), _read_from(file, meta)

    def _head_hasher(self, key: str, first: int, meta: int, before: bytes, after: bytes) -> Hasher:
        lengths = f"\0{first}:{meta}:{len(after)}\0".encode()
        return self._hasher(key, lengths, before, after)

    def _signature_text(self, key: str, file: BinaryIO, path: Path) -> str:
        assert self.signing is not None
        text = self.signing.seal(self._file_hasher(key, file))
        head = self._head(file, path)
        if head is not None:
            text += " " + self.signing.seal(self._head_hasher(key, *head))
        return text

    def _expected_signature(self, path: Path) -> list[str]:
        assert self.signing is not None
        sig = path.with_suffix(".sig")
        try:
            handle = open_regular(sig)
        except FileNotFoundError:
            raise UntrustedEntryError(
                f"{path}: not signed, and {self.signing.requirement}"
            ) from None
        except NotRegularFileError as error:
            raise CorruptFileError(f"{sig}: {error.kind} in the place of a signature") from None
        with open(handle, "rb") as file:
            return file.read(1024).decode("ascii", "replace").split()

    def _check(self, path: Path, token: str, hasher: Hasher) -> None:
        assert self.signing is not None
        reason = self.signing.check(token, hasher)
        if reason is not None:
            raise UntrustedEntryError(f"{path}: {reason}")

    def _load_verified(self, key: str, path: Path, file: BinaryIO, mmap: bool) -> Any:
        from pytest_memo.core.serialize import load

        expected = self._expected_signature(path)
        if mmap and len(expected) == 2:
            head = self._head(file, path)
            if head is not None:
                self._check(path, expected[1], self._head_hasher(key, *head))
                first_sight = self._first_sight(file)
                if first_sight:
                    self._check(path, expected[0], self._file_hasher(key, file))
                verified = _VerifiedFile(file, head)
                return load(verified, mmap_mode="r", verify=first_sight)  # type: ignore[arg-type]
        # Read once into memory; verify and load those very bytes.
        file.seek(0)
        data = _read_from(file, 0)
        self._check(path, expected[0] if expected else "", self._hasher(key, data))
        return load(io.BytesIO(data))

    def write(self, key: str, info: EntryInfo, value: Any, compress: object = None) -> int:
        """Store ``value`` atomically (and its signature, with a secret); returns its size
        (0 when nothing is stored: see :attr:`keeps_computed`).

        The temporary file is written in ``tmp/``, named after its writer: if the writer
        is killed, a later run sees that and removes it."""
        from pytest_memo.core.serialize import dump  # here: it imports numpy

        self._writable()
        if not self.keeps_computed:
            return 0
        path = self.entry_path(key)
        self._entry_directory(path.parent)
        try:
            handle, temporary = temporary_in(self.base / TEMPORARY, key)
        except FileNotFoundError:
            self._directory(self.base / TEMPORARY)
            handle, temporary = temporary_in(self.base / TEMPORARY, key)
        try:
            with open(handle, "w+b") as file:
                size = dump((asdict(info), value), file, compress=compress)
                file.flush()
                signature = None if self.signing is None else self._signature_text(key, file, path)
            if signature is not None:
                write_atomically(path.with_suffix(".sig"), signature, self.base / TEMPORARY)
            self._replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._index_insert(key, info, size)
        return size

    def _entry_directory(self, directory: Path) -> None:
        """Make ``entries/ab/``: a file in its place (or in the place of ``entries/``) is
        ours, and removed."""
        try:
            directory.mkdir(exist_ok=True)
            return
        except FileNotFoundError:
            self._directory(self.base)
            self._directory(directory.parent)
        except FileExistsError:
            if directory.is_dir():
                return
            directory.unlink()
            self._report(f"{directory} was a file, not a directory: removed it")
        directory.mkdir(exist_ok=True)

    def _replace(self, temporary: str, path: Path) -> None:
        try:
            os.replace(temporary, path)
        except IsADirectoryError:
            self._remove_path(path)
            os.replace(temporary, path)

    def _remove_path(self, path: Path) -> None:
        """Remove a file or whatever else is at ``path`` in the store (never a link's target)."""
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            shutil.rmtree(path)
        except PermissionError:
            if not (path.is_dir() and not path.is_symlink()):
                raise
            shutil.rmtree(path)  # macOS: EPERM for unlink() of a directory

    def _writable(self) -> None:
        if self.read_only:
            raise PermissionError(errno.EROFS, "the store is used read-only", str(self.root))

    def remove(self, key: str) -> None:
        self._writable()
        self._remove_entry_files(key)
        self._query(lambda index: index.execute("DELETE FROM entries WHERE key = ?", (key,)))

    def _remove_entry_files(self, key: str) -> None:
        """The entry, its signature and its manifest (see explain.py).  Plain unlinks of
        path strings first: a prune of 10,000 entries spent a third of its time in
        pathlib."""
        stem = str(self.entry_path(key, ""))
        with contextlib.suppress(NotADirectoryError):  # a file where entries/ab/ belongs
            for suffix in (".memo", ".sig", ".parts"):
                try:
                    os.unlink(stem + suffix)
                except FileNotFoundError:
                    pass
                except OSError:  # a directory in its place, ...
                    self._remove_path(Path(stem + suffix))
        self._remove_unheld_lock(key)

    def _remove_unheld_lock(self, key: str) -> None:
        """The key's lock file, unless someone holds it (computing the value again): lock
        files would otherwise pile up, one per key ever computed.  It is taken without
        waiting and removed while held, if it is still the file at its path (another
        remover may have removed it, and someone made a new one, meanwhile).  A process
        that opened it just before waits on the removed file, then takes the lock on the
        new one (locks.py)."""
        if os.name != "posix":
            return
        import fcntl

        try:  # without waiting on what is not a plain file (a FIFO, a device)
            descriptor = os.open(self._lock_path(key), os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # none, or a symbolic link (lock() replaces it)
            return
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return  # lock() replaces it, and reports it
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if still_at(self._lock_path(key), descriptor):
                os.unlink(self._lock_path(key))
        except OSError:  # held (this process's holds count too), or already gone
            pass
        finally:
            os.close(descriptor)

    def lock(self, key: str) -> KeyLock:
        """The key's lock: whoever holds it computes the entry, the others wait for it.

        It is an OS file lock, released by the kernel if its holder dies, so a waiter
        takes over from a crashed process instead of waiting forever.  A symbolic link,
        a hard link or anything but a plain file in its place is removed first (the lock
        would be taken on, or truncate, what it points to).
        """
        path = self._lock_path(key)
        self._safe_lock_file(path)
        return file_lock(path)

    def _safe_lock_file(self, path: Path) -> None:
        try:
            status = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return
        # No link left: it was removed as it was looked at (by _remove_unheld_lock).
        if stat.S_ISREG(status.st_mode) and status.st_nlink <= 1:
            return
        if stat.S_ISLNK(status.st_mode):
            what = f"a symbolic link to {os.readlink(path)}"
        elif stat.S_ISREG(status.st_mode):
            what = f"a file with {status.st_nlink} hard links"
        else:
            what = describe_mode(status.st_mode)
        self._remove_path(path)
        self._report(
            f"the lock file {path} was {what}: removed it (not what it pointed to) and "
            "made a new lock file"
        )

    # -- leftovers of killed writers ------------------------------------------

    def _leftovers(self, deep: bool = False) -> tuple[list[Path], list[Path]]:
        """(temporary files whose writer is gone, those still being written): in ``tmp/``,
        and with ``deep`` also beside the entries (where older versions wrote them)."""
        candidates: list[Path] = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            candidates.extend(Path(item.path) for item in os.scandir(self.base / TEMPORARY))
        if deep:
            for directory in _scandir(self.base / "entries"):
                candidates.extend(
                    Path(item.path)
                    for item in _scandir(Path(directory.path))
                    if item.name.startswith(".") and item.name.endswith(".tmp")
                )
        now = time.time()
        gone: list[Path] = []
        live: list[Path] = []
        for path in candidates:
            (gone if writer_gone(path, now) else live).append(path)
        return gone, live

    def remove_leftovers(self, deep: bool = False) -> tuple[int, int]:
        """Remove the temporary files of writers that were killed; returns (how many, bytes).
        With ``deep`` (pruning), also the lock files no entry needs any more."""
        if self.read_only:
            return 0, 0
        gone, _ = self._leftovers(deep)
        count = size = 0
        for path in gone:
            with contextlib.suppress(OSError):
                size += path.lstat().st_size
                self._remove_path(path)
                count += 1
        if deep:
            self._remove_lock_files_without_entries()
        return count, size

    def _remove_lock_files_without_entries(self) -> None:
        """Those of entries removed while their lock was held, or never written (a run
        killed while computing, an error in the fixture)."""
        locks = self.base / "locks"
        if locks.is_symlink():  # perhaps a directory others keep files in: not ours to clean
            return
        for item in _scandir(locks):
            named = _LOCK_NAME.fullmatch(item.name)
            if named is None or not item.is_file(follow_symlinks=False):
                continue  # not a lock file this store made
            if not os.path.lexists(self.entry_path(named[1], ".memo")):
                self._remove_unheld_lock(named[1])

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
            raise OSError(f"store index {self._index_path}: {error}") from error

    def _query(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """``action`` in a transaction on the index; a damaged index is rebuilt from the
        entries and ``action`` run again.  Other SQLite errors come out as OSError."""
        import sqlite3

        for attempt in (1, 2):
            try:
                connection = self._connection()
                with connection:
                    return action(connection)
            except sqlite3.Error as error:
                if attempt == 1 and _is_damage(error):
                    self._rebuild(str(error))
                    continue
                raise OSError(f"store index {self._index_path}: {error}") from error
        raise AssertionError("unreachable")

    def _connection(self) -> sqlite3.Connection:
        # One connection per process and thread: SQLite connections survive neither a
        # fork nor sharing between threads.
        owner = (os.getpid(), threading.get_ident(), self._generation)
        if getattr(self._local, "owner", None) != owner:
            try:
                connection = self._connect()
            except _DamagedIndex as damage:
                self._rebuild(str(damage))
                connection = self._connect()
            with self._connections_lock:
                self._connections.append((os.getpid(), connection))
            self._local.connection, self._local.owner = connection, owner
        connection_: sqlite3.Connection = self._local.connection
        return connection_

    def _connect(self) -> sqlite3.Connection:
        """A checked connection to the index, filled from the entry files if it is new;
        raises _DamagedIndex if the index file cannot be used as it is."""
        # check_same_thread=False only so that close() can close the connections of
        # threads that have finished; each thread still uses its own.
        import sqlite3

        path = self._index_path
        with contextlib.suppress(FileNotFoundError):
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise _DamagedIndex(f"{describe_mode(mode)} is in its place")
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            check = connection.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise _DamagedIndex(f"integrity check: {check[0][0]}")
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version != INDEX_VERSION:
                self._fill(connection, version)
        except sqlite3.Error as error:
            connection.close()
            if _is_damage(error):
                raise _DamagedIndex(str(error)) from None
            raise
        except BaseException:
            connection.close()
            raise
        return connection

    def _fill(self, connection: sqlite3.Connection, version: int) -> None:
        """Make a new index (or one from before user_version was set) list every entry."""
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        columns: tuple[str, ...] = ()
        if tables:
            columns = tuple(row[1] for row in connection.execute("PRAGMA table_info(entries)"))
        upgrade = version == 1 and tables == {"entries"} and columns == _COLUMNS_V1
        if not upgrade and (version != 0 or not tables <= {"entries"}):
            raise _DamagedIndex(f"a foreign schema (tables {sorted(tables)}, version {version})")
        if tables and not upgrade and columns != _COLUMNS:
            raise _DamagedIndex(f"a foreign schema (columns {list(columns)})")
        with connection:
            if upgrade:  # made again from the entry files, which hold the projects
                connection.execute("DROP TABLE entries")
            connection.executescript(_SCHEMA)
            connection.executemany(
                "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                self._scan_entries(),
            )
            connection.execute(f"PRAGMA user_version = {INDEX_VERSION}")

    def _scan_entries(self) -> Iterator[tuple[Any, ...]]:
        """Index rows for the entry files, read from their metadata (nothing is unpickled)."""
        from pytest_memo.core.serialize import pickle_stream

        for path in self._entry_files():
            try:
                handle = open_regular(path)
                with open(handle, "rb", buffering=0) as file:
                    size = os.fstat(file.fileno()).st_size
                    info = _leading_dict(pickle_stream(file, str(path)))
                entry = EntryInfo(**info)
            except (OSError, ValueError, TypeError, KeyError):
                continue  # damaged: found and reported when it is next used
            yield (
                path.stem,
                entry.slot,
                entry.fixture,
                entry.source,
                entry.created,
                time.time(),
                size,
                entry.seconds,
                entry.project,
            )

    def _rebuild(self, reason: str) -> None:
        """Replace a damaged index by one built from the entry files, under a lock (several
        processes may find the damage at once: one rebuilds, the others then use it)."""
        self.close()
        lock_path = self.base / "index.lock"
        self._safe_lock_file(lock_path)
        lock = file_lock(lock_path)
        lock.acquire()
        try:
            moved = self._rebuild_held()
        finally:
            lock.release()
        if moved is not None:
            self._report(
                f"the store index {self._index_path} was damaged ({reason}): rebuilt it "
                f"from the entry files in {self.base / 'entries'}, which are all kept{moved}"
            )

    def _rebuild_held(self) -> str | None:
        """The rebuild under its lock: what was moved aside, or None if another process
        rebuilt it meanwhile."""
        path = self._index_path
        try:
            self._connect().close()
            return None
        except _DamagedIndex:
            pass
        for suffix in ("-wal", "-shm", "-journal"):
            self._remove_path(path.with_name(path.name + suffix))
        moved = ""
        if path.is_dir() and not path.is_symlink():
            aside = path.with_name(f"{path.name}.moved-aside-{time.time_ns()}")
            os.replace(path, aside)
            moved = f"; the directory in its place was moved aside to {aside.name}"
        else:
            self._remove_path(path)
        self._connect().close()
        return moved

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
        self._query(
            lambda index: index.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    *(key, info.slot, info.fixture, info.source, info.created, now, size),
                    *(info.seconds, info.project),
                ),
            )
        )

    def keys_in_slot(self, slot: str) -> list[tuple[str, float]]:
        """The keys of the entries in ``slot``, with the time each was created."""
        if self.read_only:  # from the entry files: opening the index may write to it
            return self._scanned_slots().get(slot, [])
        rows = self._query(
            lambda index: index.execute(
                "SELECT key, created FROM entries WHERE slot = ?", (slot,)
            ).fetchall()
        )
        return [(str(key), float(created)) for key, created in rows]

    def _scanned_slots(self) -> dict[str, list[tuple[str, float]]]:
        """The keys of each slot, read from the entry files once per process: each miss of
        a read-only run asks (to explain it), and reading 10,000 entries takes a second;
        the run itself adds none."""
        if self._slots is None:
            slots: dict[str, list[tuple[str, float]]] = {}
            for row in self._scanned_listing():
                slots.setdefault(row.slot, []).append((row.key, row.created))
            self._slots = slots
        return self._slots

    def has_other_in_slot(self, slot: str, key: str, project: str = "") -> bool:
        """Whether the store holds another key for ``slot`` written by ``project`` (or by a
        version that recorded no project): another project's slot of the same name is not
        this one's."""
        row = self._query(
            lambda index: index.execute(
                "SELECT 1 FROM entries WHERE slot = ? AND key != ? AND project IN (?, '') LIMIT 1",
                (slot, key, project),
            ).fetchone()
        )
        return row is not None

    def sidecar_written(self, key: str, suffix: str) -> None:
        """A file that travels with the entry (``<key><suffix>``) was written beside it:
        nothing to do here; a remote store shares it."""

    def note_hit(self, entry: Entry) -> None:
        """Count a hit; written to the index in one transaction by :meth:`flush`."""
        if self.read_only:
            return
        with self._pending_lock:
            self._pending_hits[entry.key] = self._pending_hits.get(entry.key, 0) + 1
        if not self._has_row(entry.key):
            try:
                size = self.entry_path(entry.key).stat().st_size
            except FileNotFoundError:  # removed since it was read (a prune in another run)
                return
            self._index_insert(entry.key, entry.info, size)

    def _has_row(self, key: str) -> bool:
        row = self._query(
            lambda index: index.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone()
        )
        return row is not None

    def flush(self) -> None:
        if self.read_only:
            return
        with self._pending_lock:
            hits, self._pending_hits = self._pending_hits, {}
        if not hits:
            return
        now = time.time()
        self._query(
            lambda index: index.executemany(
                "UPDATE entries SET hits = hits + ?, last_used = ? WHERE key = ?",
                [(count, now, key) for key, count in hits.items()],
            )
        )

    def listing(self) -> list[Listing]:
        """The entries, from the index; from the entry files themselves when the index
        cannot be used (a read-only store: no hit counts then)."""
        if not self.base.is_dir():
            return []
        if self.read_only:
            return self._scanned_listing()
        try:
            rows = self._query(
                lambda index: index.execute(
                    "SELECT key, slot, fixture, source, created, last_used, hits, size, seconds, "
                    "project FROM entries ORDER BY fixture, last_used DESC"
                ).fetchall()
            )
        except OSError as error:
            self._report(f"cannot open the store index ({error}): listed the entry files")
            return self._scanned_listing()
        return [Listing(*row) for row in rows]

    def _scanned_listing(self) -> list[Listing]:
        rows = []
        for key, slot, fixture, source, created, _, size, seconds, project in self._scan_entries():
            rows.append(
                Listing(key, slot, fixture, source, created, created, 0, size, seconds, project)
            )
        return sorted(rows, key=lambda row: (row.fixture, -row.created))

    def total_size(self) -> int:
        """The size of the entries, and of the temporary files being written."""
        self.remove_leftovers()
        _, live = self._leftovers()
        return self._entries_size() + sum(_size(path) for path in live)

    def _entries_size(self) -> int:
        """Summed in the index; in a read-only store (or without a usable index), from the
        sizes of the entry files: every run's summary says it, so it must not read every
        entry of a large store."""
        if not self.base.is_dir():
            return 0
        if not self.read_only:
            with contextlib.suppress(OSError):
                return int(
                    self._query(
                        lambda index: index.execute(
                            "SELECT COALESCE(SUM(size), 0) FROM entries"
                        ).fetchone()[0]
                    )
                )
        return sum(_size(path) for path in self._entry_files())

    def _entry_files(self) -> Iterator[Path]:
        for directory in _scandir(self._entries):
            for item in _scandir(Path(directory.path)):
                if item.name.endswith(".memo") and not item.name.startswith("."):
                    yield Path(item.path)

    # -- housekeeping ---------------------------------------------------------

    def clear(self, fixture: str | None = None) -> int:
        """Remove every entry, or only the entries of one fixture; returns how many."""
        if fixture is None:
            # Counted from the files, not the index, which may be damaged.
            count = sum(1 for _ in self._entry_files())
            self.close()
            for name in ("entries", TEMPORARY):
                with contextlib.suppress(FileNotFoundError):
                    self._remove_path(self.base / name)
            # Lock files held by a run computing its value now stay: removed, a second
            # run would take a new lock and compute the same value beside it.
            self._remove_lock_files_without_entries()
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    self._remove_path(self.base / f"index.sqlite{suffix}")
            return count
        doomed = [entry.key for entry in self.listing() if entry.fixture == fixture]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def prune(
        self,
        used_keys: set[str],
        used_slots: set[str],
        everything: bool,
        project: str | None = None,
    ) -> int:
        """Remove entries this run did not use, and the temporary files of killed writers;
        returns how many files were removed.

        Always those superseded in a slot this run filled with another key (an edit made
        them unreachable); with ``everything`` (a complete run) all unused ones.  Given a
        ``project``, only the entries it wrote (and those of versions that recorded no
        project): a store shared by projects keeps the others' entries.
        """
        leftovers, _ = self.remove_leftovers(deep=True)
        doomed = [
            entry.key
            for entry in self.listing()
            if entry.key not in used_keys
            and (everything or entry.slot in used_slots)
            and (project is None or entry.project in (project, ""))
        ]
        self._remove_many(doomed)
        return len(doomed) + leftovers

    def _remove_many(self, keys: list[str]) -> None:
        if not keys:
            return  # no index to open (a store that does not exist yet stays so)
        for key in keys:
            self._remove_entry_files(key)
        self._query(
            lambda index: index.executemany(
                "DELETE FROM entries WHERE key = ?", [(key,) for key in keys]
            )
        )

    def evict(self, max_size: int) -> list[str]:
        """Remove least recently used entries until the store holds at most ``max_size`` bytes
        (temporary files of killed writers first; those being written count)."""
        self.remove_leftovers(deep=True)
        _, live = self._leftovers()
        entries = sorted(self.listing(), key=lambda entry: entry.last_used)
        total = sum(entry.size for entry in entries) + sum(_size(path) for path in live)
        evicted = []
        for entry in entries:
            if total <= max_size:
                break
            total -= entry.size
            evicted.append(entry.key)
        self._remove_many(evicted)
        return evicted


class _VerifiedFile:
    """An entry file whose parsed parts are served from verified bytes held in memory; the
    rest (array sections, which are memory-mapped through ``fileno``) from the file."""

    def __init__(self, file: BinaryIO, head: tuple[int, int, bytes, bytes]) -> None:
        self.file = file
        self.name = file.name
        self.first, self.meta, self.before, self.after = head
        self.size = self.meta + len(self.after)
        self.position = 0

    def fileno(self) -> int:
        return self.file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        start = self.position
        end = self.size if size < 0 else min(self.size, start + size)
        if end <= start:
            return b""
        if end <= self.first:
            data = self.before[start:end]
        elif start >= self.meta:
            data = self.after[start - self.meta : end - self.meta]
        elif start >= self.first and end <= self.meta:
            data = os.pread(self.file.fileno(), end - start, start)  # array data, padding
        else:
            raise CorruptFileError(f"{self.name}: a read across verified parts")
        self.position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_from(file: IO[bytes], offset: int) -> bytes:
    """The rest of ``file`` from ``offset``, in one piece."""
    file.seek(offset)
    chunks = []
    while block := file.read(1 << 24):
        chunks.append(block)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _scandir(directory: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_damage(error: Exception) -> bool:
    """Whether an SQLite error says the index file is damaged (not busy, read-only, ...)."""
    import sqlite3

    text = str(error).lower()
    if not isinstance(error, sqlite3.OperationalError) and isinstance(error, sqlite3.DatabaseError):
        return True
    return any(
        phrase in text
        for phrase in (
            "malformed",
            "not a database",
            "no such table",
            "no such column",
            "values were supplied",
            "has no column",
        )
    )


# The pickle opcodes an entry's info is made of (a dict of strings and numbers), by byte:
# those with a fixed-size argument, those with a length-prefixed UTF-8 string, and those
# with none.  Reading them directly is ten times faster than pickletools.genops, which
# made rebuilding the index of 10,000 entries take seconds.
_PROTO, _FRAME, _EMPTY_DICT, _MEMOIZE, _MARK = 0x80, 0x95, ord("}"), 0x94, ord("(")
_BINPUT, _LONG_BINPUT, _BINGET, _LONG_BINGET = ord("q"), ord("r"), ord("h"), ord("j")
_SETITEM, _SETITEMS = ord("s"), ord("u")
_CONSTANTS = {ord("N"): None, 0x88: True, 0x89: False}
_NUMBERS = {ord("K"): "<B", ord("M"): "<H", ord("J"): "<i", ord("G"): ">d"}
_FIXED = {
    _PROTO: struct.Struct("<B"),
    _FRAME: struct.Struct("<Q"),
    _BINPUT: struct.Struct("<B"),
    _LONG_BINPUT: struct.Struct("<I"),
    _BINGET: struct.Struct("<B"),
    _LONG_BINGET: struct.Struct("<I"),
    **{code: struct.Struct(layout) for code, layout in _NUMBERS.items()},
}
_STRINGS = {0x8C: struct.Struct("<B"), ord("X"): struct.Struct("<I"), 0x8D: struct.Struct("<Q")}
_BARE = {_EMPTY_DICT, _MEMOIZE, _MARK, _SETITEM, _SETITEMS, *_CONSTANTS}


def _info_opcodes(stream: bytes) -> Iterator[tuple[int, Any]]:
    """(opcode, argument) from the start of ``stream`` up to the first opcode that cannot
    be part of an entry's info (where the value starts); ValueError if it is cut short."""
    position = 0
    try:
        while position < len(stream):
            code = stream[position]
            position += 1
            if code in _FIXED:
                (argument,) = _FIXED[code].unpack_from(stream, position)
                position += _FIXED[code].size
            elif code in _STRINGS:
                (length,) = _STRINGS[code].unpack_from(stream, position)
                position += _STRINGS[code].size
                if position + length > len(stream):
                    raise ValueError("a string cut short")
                argument = stream[position : position + length].decode("utf-8", "surrogatepass")
                position += length
            elif code in _BARE:
                argument = None
            else:
                return
            yield code, argument
    except struct.error as error:
        raise ValueError(f"an argument cut short: {error}") from None


_INFO_FIELDS = frozenset(field.name for field in fields(EntryInfo))
_REQUIRED = frozenset(field.name for field in fields(EntryInfo) if field.default is MISSING)


def _leading_dict(stream: bytes) -> dict[str, Any]:
    """The entry's info, the first item of its pickled ``(info, value)`` tuple, read from
    the pickle opcodes without unpickling anything (which could run code): the info is a
    dict of strings and numbers.  ValueError if there is none."""
    try:
        return _run_info_opcodes(stream)
    except (LookupError, AttributeError, TypeError) as error:  # opcodes that make no dict
        problem = f"no entry information at the start of the pickle stream ({error})"
        raise ValueError(problem) from None


def _run_info_opcodes(stream: bytes) -> dict[str, Any]:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    older: dict[str, Any] | None = None
    for code, argument in _info_opcodes(stream):
        if code == _EMPTY_DICT:
            stack.append({})
        elif code == _MEMOIZE:
            memo[len(memo)] = stack[-1]
        elif code in (_BINPUT, _LONG_BINPUT):
            memo[argument] = stack[-1]
        elif code in (_BINGET, _LONG_BINGET):
            stack.append(memo[argument])
        elif code == _MARK:
            marks.append(len(stack))
        elif code in _CONSTANTS:
            stack.append(_CONSTANTS[code])
        elif code in _NUMBERS or code in _STRINGS:
            stack.append(argument)
        elif code in (_SETITEMS, _SETITEM):
            _set_items(stack, marks, code)
            if marks or len(stack) != 1 or not isinstance(stack[0], dict):
                continue  # not the outermost dict, or not complete yet
            if set(stack[0]) == _INFO_FIELDS:
                return dict(stack[0])
            if _REQUIRED <= set(stack[0]) <= _INFO_FIELDS:
                older = dict(stack[0])
    if older is not None:  # the info of an older version, without the fields added since
        return older
    raise ValueError("no entry information at the start of the pickle stream")


def _set_items(stack: list[Any], marks: list[int], code: int) -> None:
    """SETITEMS (the pairs above the last mark) or SETITEM (the top pair) into the dict
    below them."""
    if code == _SETITEMS:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        stack[-1].update(zip(items[::2], items[1::2], strict=True))
    else:
        value = stack.pop()
        stack[-1][stack.pop()] = value


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
