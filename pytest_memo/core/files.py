"""Writing files so that readers never see half of one, and cleaning up after writers
that were killed halfway."""

from __future__ import annotations

import functools
import os
import socket
import stat
import tempfile
import time
from pathlib import Path

__all__ = [
    "FILE_MODE",
    "STALE_SECONDS",
    "open_regular",
    "temporary_beside",
    "temporary_directory",
    "temporary_in",
    "write_atomically",
    "writer_gone",
]

# A temporary file whose writer cannot be asked (another host, an unreadable name) is
# left alone until it is this old: no write takes a day.
STALE_SECONDS = 24 * 3600


def _file_mode() -> int:
    """What ``open()`` gives a new file: 0o666 less the umask (which is set and restored)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp makes files only their owner can read; store files are meant to be shared.
FILE_MODE = _file_mode()


@functools.cache
def _host() -> str:
    return socket.gethostname().replace(".", "_").replace(os.sep, "_") or "unknown"


def _writer_tag() -> str:
    """``host.pid``: temporary file names carry their writer, so that a later run can tell
    the file of a killed writer (removed) from one being written (left alone)."""
    return f"{_host()}.{os.getpid()}"


def temporary_in(directory: Path, name: str) -> tuple[int, str]:
    """A new temporary file ``name.host.pid.XXXXXXXX.tmp`` in ``directory``, opened for
    reading and writing; ``name`` must not contain a dot."""
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix=f"{name}.{_writer_tag()}.", suffix=".tmp"
    )
    os.chmod(temporary, FILE_MODE)
    return handle, temporary


def temporary_directory(parent: Path, name: str) -> Path:
    """A new directory ``name.host.pid.XXXXXXXX.tmp`` in ``parent``, only its owner's,
    named after its maker like the files of :func:`temporary_in` (see :func:`writer_gone`)."""
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{name}.{_writer_tag()}.", suffix=".tmp"))


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s directory (so a rename onto ``path`` is atomic)."""
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp"
    )
    os.chmod(temporary, FILE_MODE)
    return handle, temporary


def writer_gone(path: Path, now: float | None = None) -> bool:
    """Whether the temporary file or directory ``path`` (named by :func:`temporary_in`,
    :func:`temporary_beside` or :func:`temporary_directory`) is left over: its writer, on
    this host, is no longer running, or it has not been written to for
    :data:`STALE_SECONDS`."""
    try:
        modified = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if (now if now is not None else time.time()) - modified > STALE_SECONDS:
        return True
    parts = path.name.split(".")  # [...] host pid random tmp
    if len(parts) < 5 or parts[-1] != "tmp" or parts[-4] != _host():
        return False
    try:
        pid = int(parts[-3])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


def open_regular(path: Path) -> int:
    """A descriptor open for reading on the regular file ``path``, never blocking: a FIFO,
    a device or a directory in its place raises :class:`NotRegularFileError`."""
    handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(handle).st_mode
    except BaseException:
        os.close(handle)
        raise
    if not stat.S_ISREG(mode):
        os.close(handle)
        raise NotRegularFileError(path, mode)
    return handle


class NotRegularFileError(OSError):
    """A path where a regular file belongs holds something else."""

    def __init__(self, path: Path, mode: int) -> None:
        self.kind = describe_mode(mode)
        super().__init__(f"{path} is {self.kind}, not a regular file")


def describe_mode(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def write_atomically(path: Path, text: str, directory: Path | None = None) -> None:
    """Write a small text file through a temporary file and a rename: all or nothing.

    The temporary file is made in ``directory`` (same file system) if given."""
    if directory is None:
        handle, temporary = temporary_beside(path)
    else:
        handle, temporary = temporary_in(directory, path.name.replace(".", "-"))
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
