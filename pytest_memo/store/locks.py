"""The store's lock files: an OS file lock whose file may be removed while it is waited on.

The store removes the lock file of an entry it removes (they would otherwise pile up, one
per key ever computed).  A process already waiting on that file then wakes up holding a
lock on a file no one else can open any more, while the next one creates a new file at
the same path and locks that: two holders.  So a lock taken here is only kept once the
file it was taken on is still the one at its path; otherwise it is taken again on the new
one.  (filelock does this too from some 4.x release on, but not the 3.x ones a project
may pin; on POSIX the store relies on this module, not on which filelock is installed.)
"""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path
from typing import Protocol

from pytest_memo.core.files import FILE_MODE

__all__ = ["FileLock", "KeyLock", "file_lock", "still_at"]


class KeyLock(Protocol):
    """What the store hands out to whoever computes an entry."""

    def acquire(self, blocking: bool = True) -> bool: ...

    def release(self) -> None: ...


class FileLock:
    """An exclusive ``flock`` on ``path`` (created if missing), released by the kernel if
    its holder dies.  Not reentrant: each instance is one holder, also within a process
    (locks taken through two instances exclude each other, as between processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; without ``blocking``, False at once if someone holds it."""
        import fcntl

        if self._descriptor is not None:
            raise RuntimeError(f"the lock {self.path} is already held by this holder")
        operation = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        while True:
            descriptor = self._open()
            try:
                fcntl.flock(descriptor, operation)
            except BlockingIOError:
                os.close(descriptor)
                return False
            except BaseException:
                os.close(descriptor)
                raise
            if still_at(self.path, descriptor):
                self._descriptor = descriptor
                _HELD.add(self)
                return True
            os.close(descriptor)  # removed (or replaced) while waited on: lock the new file

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        try:
            return os.open(self.path, flags, FILE_MODE)
        except FileNotFoundError:  # the first lock of a new store: make its directory
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, FILE_MODE)

    def release(self) -> None:
        _HELD.discard(self)
        self._forget_in_child()  # the same closing of the descriptor

    def _forget_in_child(self) -> None:
        """In a process forked while this lock was held: the parent holds it, not us."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            os.close(descriptor)


# Locks held by this process.  A child forked meanwhile (a fixture that forks while its
# value is computed, a multiprocessing pool) would otherwise keep them held after the
# parent released them: a flock lasts until every copy of its descriptor is closed, and
# other processes waited for the child to exit.
_HELD: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _release_in_child() -> None:
    for lock in list(_HELD):
        lock._forget_in_child()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_in_child)


def still_at(path: Path, descriptor: int) -> bool:
    """Whether the open file is still the one at ``path`` (not removed nor replaced)."""
    held = os.fstat(descriptor)
    with contextlib.suppress(OSError):
        current = os.stat(path, follow_symlinks=False)
        return held.st_nlink > 0 and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)
    return False


def file_lock(path: Path) -> KeyLock:
    """The lock on ``path``: ours on POSIX, filelock's elsewhere (where the store never
    removes lock files, see LocalStore._remove_unheld_lock)."""
    if os.name == "posix":
        return FileLock(path)
    import filelock  # here: importing it costs 30 ms at pytest start-up otherwise

    return _Filelock(filelock.FileLock(path))


class _Filelock:
    """filelock's lock as a KeyLock (its non-blocking acquire raises instead)."""

    def __init__(self, lock: object) -> None:
        import filelock

        assert isinstance(lock, filelock.BaseFileLock)
        self._lock = lock

    def acquire(self, blocking: bool = True) -> bool:
        import filelock

        try:
            self._lock.acquire(blocking=blocking)
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        self._lock.release()
