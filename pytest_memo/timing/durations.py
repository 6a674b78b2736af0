"""Test durations from earlier runs, kept in pytest's cache (``.pytest_cache``), which CI
jobs restore to balance ``--shard`` and order the runner's long tests first."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pytest_memo.core.files import write_atomically

__all__ = ["load", "save"]

FILE_NAME = "durations.json"


def load(directory: Path, name: str = FILE_NAME) -> dict[str, float]:
    """Seconds per test node id; empty when nothing was recorded or the file is unreadable."""
    try:
        content = json.loads((directory / name).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict):
        return {}
    return {k: float(v) for k, v in content.items() if isinstance(v, int | float)}


def save(directory: Path, measured: Mapping[str, float], name: str | None = None) -> None:
    """Merge ``measured`` into the file, atomically (a reader sees the old or the new file).

    ``name`` keeps the measurements of a sharded run apart from the main file; a later
    save to the main file folds such files in.
    """
    if not measured:
        return
    merged = load(directory, name or FILE_NAME)
    if name is None:
        for pending in sorted(directory.glob("durations-shard-*.json")):
            merged.update(load(directory, pending.name))
    merged.update({k: round(v, 4) for k, v in measured.items()})
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(merged, sort_keys=True, separators=(",", ":"))
    write_atomically(directory / (name or FILE_NAME), text)
    if name is None:
        for pending in directory.glob("durations-shard-*.json"):
            pending.unlink(missing_ok=True)
