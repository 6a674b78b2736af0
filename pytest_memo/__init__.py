"""pytest-memo: memoized fixtures, fast array serialization and hashing, a parallel runner."""

from pytest_memo.errors import CorruptFileError
from pytest_memo.hashing import UnhashableError, hash
from pytest_memo.marker import memo
from pytest_memo.memory import cache
from pytest_memo.serialize import dump, load

__all__ = ["CorruptFileError", "UnhashableError", "cache", "dump", "hash", "load", "memo"]
__version__ = "0.1.0"
