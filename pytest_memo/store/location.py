"""Where the store lives: the one owner of the directory name and layout version."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = [
    "DEFAULT_DIRECTORY",
    "LAYOUT",
    "contains_project",
    "is_url",
    "local_directory",
    "refusal",
]

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


def contains_project(directory: Path, rootdir: Path) -> bool:
    """Whether ``directory`` is the rootdir or one of its parents: a store there would mark
    the whole project as a cache (a ``.gitignore`` holding ``*``, a ``CACHEDIR.TAG``),
    hiding it from git and backups, and ``--memo-clear`` works on what it holds."""
    try:
        rootdir.resolve().relative_to(directory.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def refusal(directory: Path, rootdir: Path, setting: str) -> str | None:
    """Why ``directory`` cannot be the store (None: it can), with the fix."""
    if not contains_project(directory, rootdir):
        return None
    return (
        f"{setting} is {directory}, which contains the project ({rootdir}): the store "
        "marks its directory as a cache that git and backups skip (a .gitignore holding "
        f"'*'), which would hide the whole project. Give the store a directory of its "
        f"own, such as {directory / DEFAULT_DIRECTORY}"
    )


def project_identity(rootdir: Path, configured: str = "") -> str:
    """The project's identity, recorded in the entries it writes: ``--memo-prune`` removes
    only its own from a store that projects share.

    The ini option ``memo_project`` if set; else the ``[project] name`` of the rootdir's
    ``pyproject.toml``; else the rootdir's directory name.  Two checkouts of one project
    are one project (they carry the same name wherever they are); two projects are two.
    """
    if configured.strip():
        return configured.strip()
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pytest depends on tomli there
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    try:
        with open(rootdir / "pyproject.toml", "rb") as file:
            name = tomllib.load(file).get("project", {}).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name.strip() if isinstance(name, str) and name.strip() else rootdir.name
