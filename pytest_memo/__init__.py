"""pytest-memo: memoized fixtures, fast array serialization and hashing, a parallel runner.

Importing it is cheap: numpy, cloudpickle and blosc load when ``dump`` or ``load`` is first
used, not when pytest loads the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_memo.errors import CorruptFileError
from pytest_memo.hashing import UnhashableError, hash
from pytest_memo.marker import memo
from pytest_memo.memory import cache

if TYPE_CHECKING:
    from pytest_memo.serialize import dump, load

__all__ = ["CorruptFileError", "UnhashableError", "cache", "dump", "hash", "load", "memo"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("dump", "load"):
        from pytest_memo import serialize

        return getattr(serialize, name)
    raise AttributeError(f"module 'pytest_memo' has no attribute {name!r}")
