"""Content hashing: a stable xxh3-128 digest of (nearly) any Python object.

The digest depends on content only: not on the process, ``PYTHONHASHSEED``, dict or set
insertion order, memory layout of arrays, or object identity.  NumPy buffers are fed to
xxh3 directly (tens of GB/s); containers are walked in Python with their items in a
canonical order; other objects are walked through their pickle reduction, so anything
that can be pickled can be hashed.
"""

from __future__ import annotations

import array
import dataclasses
import dis
import functools
import os
import struct
import sys
import types
from collections.abc import Callable, Iterable
from operator import itemgetter
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import xxhash

from pytest_memo.core.inspection import global_names

if TYPE_CHECKING:
    import numpy as np

__all__ = ["UnhashableError", "code_hash", "hash"]

_FLUSH_AT = 1 << 16  # pending pieces, each small
_PARALLEL_FROM = 32 << 20
_PIECE = 8 << 20
_pack_q = struct.Struct("<q").pack
_pack_d = struct.Struct("<d").pack
_pack_dd = struct.Struct("<dd").pack
_first = itemgetter(0)


class UnhashableError(TypeError):
    """Raised when an object's content cannot be reduced to bytes (a lock, a socket, ...)."""


def hash(obj: Any, relative_to: str | os.PathLike[str] | None = None) -> str:
    """Return a 32-character hex digest of ``obj``'s content.

    With ``relative_to`` (a project's root directory), absolute paths inside it count as
    relative ones, so the digest is the same in every checkout of the project.
    """
    return content_hash(obj, relative_to)


def content_hash(
    obj: Any,
    relative_to: str | os.PathLike[str] | None = None,
    code_of: Callable[[Any], str | None] | None = None,
    *,
    ordered: bool = False,
) -> str:
    """:func:`hash`, where ``code_of`` may add a fingerprint of the code of the functions
    and classes met (cache keys: a table of functions changes when a function does).

    ``ordered`` is the mode of cache keys, where a value must be told apart from any other
    value code could observe: the order of a dict's items counts (code iterating it sees
    it), and strings holding an absolute path inside ``relative_to`` (``__file__``) count
    as relative ones, as :class:`~pathlib.Path` objects always do.
    """
    root = (
        relative_to if isinstance(relative_to, Path) or relative_to is None else Path(relative_to)
    )
    hasher = _ContentHasher(root)
    hasher.code_of = code_of
    hasher.ordered = ordered
    try:
        hasher.update(obj)
    except RecursionError:
        raise UnhashableError(
            "object is nested too deeply to hash; flatten it or hash a summary of it"
        ) from None
    return hasher.hexdigest()


@functools.lru_cache(maxsize=16)
def _roots(root: Path) -> tuple[Path, ...]:
    """A root directory as given and resolved (resolving costs a system call per part)."""
    return tuple({root, root.resolve()})


def _piece_digest(piece: memoryview) -> bytes:
    return bytes(xxhash.xxh3_128_digest(piece))


def code_hash(func: types.FunctionType) -> str:
    """Digest of what a function does: bytecode, names and constants, without its docstring,
    file name or line numbers (so comments, formatting and moving it do not count)."""
    return _code_digest(func.__code__)


@functools.cache
def _code_digest(code: types.CodeType) -> str:
    hasher = _ContentHasher()
    hasher._code(code)
    return hasher.hexdigest()


_HAS_CONST = frozenset(dis.hasconst)
_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]


def _instructions(code: types.CodeType) -> tuple[bytes, list[int]]:
    """The bytecode with each constant's index replaced by its rank among the constants
    the code loads (in order of first use), and those constants' indexes.

    Constant indexes depend on constants no instruction loads: adding a docstring to a
    function that returns None makes the docstring constant 0 and None constant 1, and
    its ``LOAD_CONST 0`` becomes ``LOAD_CONST 1``.  Ranks do not move.
    """
    raw = code.co_code
    out = bytearray()
    ranks: dict[int, int] = {}
    extended = 0
    for position in range(0, len(raw), 2):
        op, argument = raw[position], raw[position + 1] | extended
        if op == _EXTENDED_ARG:
            extended = argument << 8
            continue
        extended = 0
        if op in _HAS_CONST:
            argument = ranks.setdefault(argument, len(ranks))
        out += bytes((op,)) + argument.to_bytes(4, "little")
    return bytes(out), list(ranks)


def _global_name(obj: Any) -> str | None:
    """``module:qualname`` when ``obj`` can be found again by that name, else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is obj else None


class _ContentHasher:
    """Walks an object and feeds a canonical byte encoding of it to xxh3-128."""

    def __init__(self, root: Path | None = None) -> None:
        self._roots = () if root is None else _roots(root)
        self._digest = xxhash.xxh3_128()
        self._pending: list[bytes] = []
        # Containers on the current path, for cycles: id -> position in the path.
        self._path: dict[int, int] = {}
        self.code_of: Callable[[Any], str | None] | None = None
        self.ordered = False  # cache keys: dict order counts, path strings are relative
        self._root_texts = tuple(map(str, self._roots)) if self._roots else ()

    def hexdigest(self) -> str:
        self._flush()
        return str(self._digest.hexdigest())

    def digest_of(self, obj: Any) -> bytes:
        """Digest of one item on its own, used to order set elements and odd dict keys."""
        sub = _ContentHasher()
        sub._roots = self._roots
        sub._root_texts = self._root_texts
        sub.code_of = self.code_of
        sub.ordered = self.ordered
        sub._path = self._path
        sub.update(obj)
        sub._flush()
        return bytes(sub._digest.digest())

    # -- output ---------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        self._pending.append(data)

    def _emit_sized(self, tag: bytes, data: bytes) -> None:
        self._pending.append(tag + _pack_q(len(data)) + data)

    def _emit_buffer(self, buffer: Any) -> None:
        self._flush()
        view = memoryview(buffer).cast("B")
        if view.nbytes < _PARALLEL_FROM:
            self._digest.update(view)
            return
        # Large buffers: xxh3 of each piece on every core, then of the pieces' digests.
        from pytest_memo.core import codecs

        pieces = [view[low : low + _PIECE] for low in range(0, view.nbytes, _PIECE)]
        digests = codecs.map_ordered(_piece_digest, pieces)
        self._digest.update(b"pieces" + b"".join(digests))

    def _flush(self) -> None:
        if self._pending:
            self._digest.update(b"".join(self._pending))
            self._pending.clear()

    # -- dispatch -------------------------------------------------------------

    def update(self, obj: Any) -> None:
        handler = _EXACT_TYPES.get(type(obj))
        if handler is not None:
            handler(self, obj)
            return
        if id(obj) in self._path:
            self._emit(b"@" + _pack_q(self._path[id(obj)]))
            return
        self._path[id(obj)] = len(self._path)
        try:
            self._update_other(obj)
        finally:
            del self._path[id(obj)]
        if len(self._pending) >= _FLUSH_AT:
            self._flush()

    def _update_other(self, obj: Any) -> None:
        kind = type(obj)
        if kind in _CONTAINERS:
            _CONTAINERS[kind](self, obj)
        elif kind.__module__.startswith("numpy") and self._numpy(obj):
            return
        elif isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
            self._callable(obj)
        elif isinstance(obj, types.ModuleType):
            self._emit_sized(b"M", obj.__name__.encode())
        elif isinstance(obj, types.CodeType):
            self._code(obj)
        elif isinstance(obj, PurePath):
            self._filesystem_path(obj)
        elif dataclasses.is_dataclass(obj):
            self._dataclass(obj)
        elif kind.__module__.startswith("pandas") and _pandas_handler(self, obj):
            return
        else:
            self._reduced(obj)

    # -- atoms ----------------------------------------------------------------

    def _none(self, obj: None) -> None:
        self._emit(b"N")

    def _bool(self, obj: bool) -> None:
        self._emit(b"T" if obj else b"F")

    def _int(self, obj: int) -> None:
        self._emit(b"i" + str(obj).encode() + b";")

    def _float(self, obj: float) -> None:
        self._emit(b"f" + _pack_d(obj))

    def _complex(self, obj: complex) -> None:
        self._emit(b"c" + _pack_dd(obj.real, obj.imag))

    def _str(self, obj: str) -> None:
        if self.ordered and self._root_texts and obj.startswith(self._root_texts):
            for root in self._root_texts:
                if obj == root or obj.startswith(root + os.sep):
                    relative = (
                        obj[len(root) :].replace(os.sep, "/").encode("utf-8", "surrogatepass")
                    )
                    self._emit_sized(b"r", relative)  # not a string "<root>/..."
                    return
        data = obj.encode("utf-8", "surrogatepass")
        self._pending.append(b"s" + _pack_q(len(data)) + data)

    def _bytes(self, obj: bytes) -> None:
        self._emit_sized(b"b", obj)

    def _bytearray(self, obj: bytearray) -> None:
        self._emit_sized(b"B", bytes(obj))

    def _ellipsis(self, obj: Any) -> None:
        self._emit(b"E")

    # -- containers -----------------------------------------------------------

    def _sequence(self, tag: bytes, items: Any) -> None:
        self._emit(tag + _pack_q(len(items)))
        for item in items:
            self.update(item)

    def _list(self, obj: list[Any]) -> None:
        if len(obj) > 16 and all(type(item) is str for item in obj):
            self._strings(obj)
        else:
            self._sequence(b"[", obj)

    def _tuple(self, obj: tuple[Any, ...]) -> None:
        self._sequence(b"(", obj)

    def _strings(self, obj: list[str]) -> None:
        # A list of strings is fully described by the code-point lengths and the joined text;
        # encoding it in two bulk operations is much faster than item by item.
        lengths = array.array("q", map(len, obj))
        self._emit(b"S" + _pack_q(len(obj)))
        self._emit_buffer(lengths)
        self._str("".join(obj))

    def _dict(self, obj: dict[Any, Any]) -> None:
        self._emit(b"{" + _pack_q(len(obj)))
        if self.ordered:  # in insertion order: code iterating the dict sees that order
            update = self.update
            for key, value in obj.items():
                update(key)
                update(value)
            return
        if all(type(key) is str for key in obj):
            items = sorted(obj.items(), key=_first)
            update = self.update
            for key, value in items:
                self._str(key)
                update(value)
            return
        keyed = [(self.digest_of(k), k, v) for k, v in obj.items()]
        for _, key, value in sorted(keyed, key=_first):
            self.update(key)
            self.update(value)

    def _set(self, tag: bytes, obj: Iterable[Any]) -> None:
        digests = sorted(self.digest_of(item) for item in obj)
        self._emit(tag + _pack_q(len(digests)) + b"".join(digests))

    # -- arrays ---------------------------------------------------------------

    def _numpy(self, obj: Any) -> bool:
        """Arrays, scalars and dtypes by content; False for other numpy objects."""
        import numpy  # already imported by whoever made ``obj``

        if isinstance(obj, numpy.ndarray) and type(obj) in (numpy.ndarray, numpy.memmap):
            self._array(b"a", obj)
        elif isinstance(obj, numpy.generic):
            self._array(b"g", numpy.asarray(obj))
        elif isinstance(obj, numpy.dtype):
            self._emit_sized(b"d", _dtype_text(obj).encode())
        else:
            return False
        return True

    def _array(self, tag: bytes, array: np.ndarray[Any, Any]) -> None:
        header = f"{_dtype_text(array.dtype)}|{array.shape}".encode()
        self._emit_sized(tag, header)
        if array.dtype.hasobject:
            self._sequence(b"[", array.ravel(order="C").tolist())
            return
        # Equal values hash equal whatever the memory layout (Fortran order, strides, memmap).
        contiguous = array if array.flags.c_contiguous else array.copy(order="C")
        self._emit_buffer(contiguous.reshape(-1).view("u1") if contiguous.size else b"")

    # -- code and objects -----------------------------------------------------

    def _callable(self, obj: Any) -> None:
        name = _global_name(obj)
        if name is not None:
            self._emit_sized(b"G", name.encode())
            fingerprint = self.code_of(obj) if self.code_of is not None else None
            if fingerprint is not None:
                self._emit_sized(b"C", fingerprint.encode())
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, type):
            self._class(obj)
        else:
            self._reduced(obj)

    def _function(self, func: types.FunctionType) -> None:
        """A function that cannot be imported by name (lambda, closure): hash what it does."""
        self._emit_sized(b"L", func.__qualname__.encode())
        self._code(func.__code__)
        self.update(func.__defaults__)
        self.update(func.__kwdefaults__)
        self.update([cell.cell_contents for cell in func.__closure__ or ()])
        names = global_names(func.__code__)
        self.update({name: func.__globals__[name] for name in names if name in func.__globals__})

    def _code(self, code: types.CodeType) -> None:
        # Bytecode and names, never file names or line numbers: formatting and comments
        # do not change the digest, moving a function does not either.  Constants count
        # as the instructions load them; a docstring (an unused string, or the None
        # standing for a missing one, in slot 0) does not count, in nested functions too.
        instructions, loaded = _instructions(code)
        consts = code.co_consts
        self._emit_sized(b"K", instructions)
        self.update(
            (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount)
        )
        self.update((code.co_kwonlyargcount, code.co_posonlyargcount, code.co_flags))
        self._sequence(b"(", [consts[index] for index in loaded])
        # Constants no instruction loads cannot change what the code does; they count all
        # the same (but for the docstring slot), in case an instruction reads them unseen.
        unused = set(range(len(consts))) - set(loaded)
        if 0 in unused and (consts[0] is None or isinstance(consts[0], str)):
            unused.discard(0)
        self._sequence(b"u", [consts[index] for index in sorted(unused)])

    def _class(self, cls: type) -> None:
        self._emit_sized(b"C", cls.__qualname__.encode())
        self.update(cls.__bases__)
        # __firstlineno__ (Python 3.13+) would make moving the class change its digest.
        skip = {
            "__dict__",
            "__weakref__",
            "__module__",
            "__doc__",
            "__qualname__",
            "__firstlineno__",
        }
        self.update({k: v for k, v in vars(cls).items() if k not in skip})

    def _filesystem_path(self, path: PurePath) -> None:
        text = path.as_posix()
        if path.is_absolute():
            for root in self._roots:
                if path.is_relative_to(root):
                    text = "<root>/" + path.relative_to(root).as_posix()
                    break
        self._emit_sized(b"P", f"{type(path).__name__}:{text}".encode())

    def _dataclass(self, obj: Any) -> None:
        self._callable(type(obj))
        self._emit(b"D")
        for field in dataclasses.fields(obj):
            self._str(field.name)
            self.update(getattr(obj, field.name))

    def _reduced(self, obj: Any) -> None:
        """Anything else: walk the same reduction pickle would use."""
        try:
            reduced = obj.__reduce_ex__(4)
        except Exception as error:
            raise UnhashableError(
                f"cannot hash an object of type {type(obj).__qualname__}: {error}"
            ) from None
        if isinstance(reduced, str):
            self._emit_sized(b"G", f"{type(obj).__module__}:{reduced}".encode())
            return
        parts = list(reduced) + [None] * (6 - len(reduced))
        constructor, args, state, list_items, dict_items, _ = parts
        self._emit(b"R")
        self._callable(constructor)
        self.update(args)
        self.update(state)
        self.update(None if list_items is None else list(list_items))
        if dict_items is not None:  # an OrderedDict: its order counts in keys
            dict_items = list(dict_items) if self.ordered else dict(dict_items)
        self.update(dict_items)


def _dtype_text(dtype: np.dtype[Any]) -> str:
    return str(dtype.descr) if dtype.fields else dtype.str


def _pandas_handler(hasher: _ContentHasher, obj: Any) -> bool:
    """Hash pandas containers by content, so equal frames hash equal. False if not handled."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        hasher._emit(b"pF")
        hasher.update(obj.columns)
        hasher.update(obj.index)
        for position in range(obj.shape[1]):
            column = obj.iloc[:, position]
            hasher.update((str(column.dtype), column.to_numpy()))
        return True
    if isinstance(obj, pd.Series):
        hasher._emit(b"pS")
        hasher.update((obj.name, str(obj.dtype), obj.to_numpy()))
        hasher.update(obj.index)
        return True
    if isinstance(obj, pd.Index):
        hasher._emit(b"pI")
        hasher.update((list(obj.names), str(obj.dtype), obj.to_numpy()))
        return True
    return False


_Handler = Callable[[_ContentHasher, Any], None]

_EXACT_TYPES: dict[type, _Handler] = {
    type(None): _ContentHasher._none,
    bool: _ContentHasher._bool,
    int: _ContentHasher._int,
    float: _ContentHasher._float,
    complex: _ContentHasher._complex,
    str: _ContentHasher._str,
    bytes: _ContentHasher._bytes,
    type(Ellipsis): _ContentHasher._ellipsis,
}

_CONTAINERS: dict[type, _Handler] = {
    list: _ContentHasher._list,
    tuple: _ContentHasher._tuple,
    dict: _ContentHasher._dict,
    bytearray: _ContentHasher._bytearray,
    set: lambda hasher, obj: hasher._set(b"<", obj),
    frozenset: lambda hasher, obj: hasher._set(b">", obj),
}
