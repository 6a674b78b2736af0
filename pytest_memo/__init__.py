"""pytest-memo: memoized fixtures, fast array serialization and hashing, a parallel runner.

Importing it is cheap: each name below loads its module when first used (numpy,
cloudpickle and blosc only with ``dump`` or ``load``), so pytest starts as quickly with
the plugin installed as without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_memo.core.errors import CorruptFileError, MemoWarning
    from pytest_memo.core.hashing import UnhashableError, hash
    from pytest_memo.core.serialize import dump, load
    from pytest_memo.memoize.cache import cache
    from pytest_memo.memoize.marker import memo
    from pytest_memo.parallel.once import once_per_run

__all__ = [
    "CorruptFileError",
    "MemoWarning",
    "UnhashableError",
    "cache",
    "dump",
    "hash",
    "load",
    "memo",
    "once_per_run",
]
__version__ = "0.1.0"

_HOMES = {
    "CorruptFileError": "core.errors",
    "MemoWarning": "core.errors",
    "UnhashableError": "core.hashing",
    "hash": "core.hashing",
    "memo": "memoize.marker",
    "once_per_run": "parallel.once",
    "cache": "memoize.cache",
    "dump": "core.serialize",
    "load": "core.serialize",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pytest_memo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pytest_memo.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
