"""Writing files so that readers never see half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["FILE_MODE", "write_atomically"]


def _file_mode() -> int:
    """What ``open()`` gives a new file: 0o666 less the umask (which is set and restored)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp makes files only their owner can read; store files are meant to be shared.
FILE_MODE = _file_mode()


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in ``path``'s directory (so a rename onto ``path`` is atomic)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(temporary, FILE_MODE)
    return handle, temporary


def write_atomically(path: Path, text: str) -> None:
    """Write a small text file through a temporary file and a rename: all or nothing."""
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
