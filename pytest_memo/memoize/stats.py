"""Counting what the store did during a run, and saying it in one line or a table."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_memo.store.local import Listing

__all__ = ["FixtureStats", "RunStats", "format_size", "parse_size"]

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


def parse_size(text: str) -> int:
    """``"2GB"`` -> 2_000_000_000; ``"512MiB"``, ``"1.5G"`` and plain byte counts work too."""
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0:
        raise ValueError(
            f"cannot read the size {text!r}: write a number with an optional unit, "
            "such as 500MB, 2GB or 1GiB"
        )
    return int(value * _UNITS[unit])


def format_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def format_age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@dataclass
class FixtureStats:
    hits: int = 0
    misses: int = 0
    invalidated: int = 0
    seconds_saved: float = 0.0
    seconds_computed: float = 0.0


@dataclass
class RunStats:
    fixtures: dict[str, FixtureStats] = field(default_factory=dict)
    # Keys looked up and slots filled during the run, for --memo-prune.
    used_keys: set[str] = field(default_factory=set)
    used_slots: set[str] = field(default_factory=set)
    # Why each value computed in the run was computed (--memo-explain): (name, reason).
    explained: list[tuple[str, str]] = field(default_factory=list)
    # Keys whose stored value saved time in this run: each counts once, however many
    # tests, scopes or worker processes loaded it.
    saved_by_key: dict[str, tuple[str, float]] = field(default_factory=dict)

    # Counts are added under it: cached functions may be called from several threads,
    # and ``+=`` between two thread switches loses counts.
    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def hit(self, key: str, name: str, seconds: float) -> None:
        """A stored value of ``name`` used, which took ``seconds`` to compute."""
        with self._counting:
            self.of(name).hits += 1
            self._saved(key, name, seconds)

    def miss(self, name: str, seconds: float) -> None:
        """A value of ``name`` computed in ``seconds``."""
        with self._counting:
            stats = self.of(name)
            stats.misses += 1
            stats.seconds_computed += seconds

    def invalidation(self, name: str) -> None:
        """A stored value of ``name`` replaced, as what it depends on changed."""
        with self._counting:
            self.of(name).invalidated += 1

    def _saved(self, key: str, name: str, seconds: float) -> None:
        """A hit on ``key``, whose value took ``seconds`` to compute: counted once."""
        if key not in self.saved_by_key:
            self.saved_by_key[key] = (name, seconds)
            self.of(name).seconds_saved += seconds

    def explain(self, name: str, reason: str) -> None:
        self.explained.append((name, reason))

    def of(self, name: str) -> FixtureStats:
        return self.fixtures.setdefault(name, FixtureStats())

    def merge(self, other: dict[str, Any]) -> None:
        """Add the counts a worker process reported (see :meth:`as_dict`)."""
        with self._counting:
            for name, counts in other.get("fixtures", {}).items():
                mine = self.of(name)
                for attribute, value in counts.items():
                    if attribute != "seconds_saved":  # from "saved", once per key
                        setattr(mine, attribute, getattr(mine, attribute) + value)
            for key, name, seconds in other.get("saved", ()):
                self._saved(key, name, seconds)
        self.used_keys.update(other.get("used_keys", ()))
        self.used_slots.update(other.get("used_slots", ()))
        self.explained.extend((name, reason) for name, reason in other.get("explained", ()))

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and dicts: what xdist and --par workers send to the main process."""
        return {
            "fixtures": {name: asdict(stats) for name, stats in self.fixtures.items()},
            "used_keys": sorted(self.used_keys),
            "used_slots": sorted(self.used_slots),
            "explained": [list(item) for item in self.explained],
            "saved": self._saved_list(),
        }

    def _saved_list(self) -> list[tuple[str, str, float]]:
        return [(key, name, seconds) for key, (name, seconds) in sorted(self.saved_by_key.items())]

    def total(self) -> FixtureStats:
        total = FixtureStats()
        for stats in self.fixtures.values():
            for attribute, value in asdict(stats).items():
                setattr(total, attribute, getattr(total, attribute) + value)
        return total

    def summary_line(self, store_size: int | None, where: str) -> str:
        total = self.total()
        parts = [
            f"{total.hits} hit{'s' * (total.hits != 1)} ({total.seconds_saved:.1f} s saved)",
            f"{total.misses} miss{'es' * (total.misses != 1)} "
            f"({total.seconds_computed:.1f} s computed)",
            f"{total.invalidated} invalidated",
        ]
        if store_size is not None:
            parts.append(f"store {format_size(store_size)} in {where}")
        return "memo: " + ", ".join(parts)

    def table(self) -> list[str]:
        rows = [("fixture", "hits", "misses", "invalidated", "saved", "computed")]
        for name, stats in sorted(self.fixtures.items()):
            rows.append(
                (
                    name,
                    str(stats.hits),
                    str(stats.misses),
                    str(stats.invalidated),
                    f"{stats.seconds_saved:.2f} s",
                    f"{stats.seconds_computed:.2f} s",
                )
            )
        return _aligned(rows)


def listing_table(
    entries: list[Listing], now: float | None = None, params: dict[str, str] | None = None
) -> list[str]:
    """The ``--memo-show`` table; ``params`` the readable parameter of each key."""
    now = time.time() if now is None else now
    params = params or {}
    rows = [("fixture", "param", "key", "size", "created", "last used", "hits", "saved")]
    for entry in entries:
        rows.append(
            (
                entry.fixture,
                params.get(entry.key, ""),
                entry.key[:12],
                format_size(entry.size),
                format_age(now - entry.created),
                format_age(now - entry.last_used),
                str(entry.hits),
                f"{entry.hits * entry.seconds:.1f} s",
            )
        )
    if not params:  # no parametrized fixture: no parameter column
        return _aligned([row[:1] + row[2:] for row in rows])
    return _aligned(rows, left=2)


def listing_totals(entries: list[Listing]) -> str:
    size = sum(entry.size for entry in entries)
    saved = sum(entry.hits * entry.seconds for entry in entries)
    fixtures = len({entry.fixture for entry in entries})
    return (
        f"{len(entries)} entr{'ies' if len(entries) != 1 else 'y'} of {fixtures} "
        f"fixture{'s' * (fixtures != 1)}, {format_size(size)}, {saved:.1f} s saved so far"
    )


def _aligned(rows: Sequence[tuple[str, ...]], left: int = 1) -> list[str]:
    """Columns aligned: the first ``left`` to the left, the others (numbers) to the right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if column < left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
