"""Where the store lives: the one owner of the directory name and layout version."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DIRECTORY", "LAYOUT", "is_url", "local_directory"]

# The store directory, relative to the rootdir, unless --memo-dir / memo_dir say otherwise.
DEFAULT_DIRECTORY = ".pytest_memo"
# The store's layout version: the subdirectory holding entries, locks and the index.
LAYOUT = "v1"


def is_url(location: str) -> bool:
    """Whether a ``--memo-dir`` value names a remote store (s3://..., file://...)."""
    return "://" in location


def local_directory(rootdir: Path, location: str | None) -> Path:
    """The local store directory for a ``--memo-dir`` value (None: the default).

    A relative path is relative to ``rootdir``; for a URL it is the default directory,
    which holds the remote store's local cache.
    """
    if not location or is_url(location):
        location = DEFAULT_DIRECTORY
    return rootdir / Path(location).expanduser()
