"""Chunk codecs: byte shuffle plus a general-purpose compressor, run on a shared thread pool.

Every compressor used here releases the GIL, so chunks compress and decompress on all
cores at once.  Shuffling numeric data by item size (all first bytes, then all second
bytes, ...) groups the slowly varying exponent bytes together, which is what makes
floating-point data compressible.

lz4 runs through Blosc (python-blosc): its SIMD shuffle and LZ4 in one C call per chunk,
decompressed straight into the destination, cost a half to a third of the CPU time of
python-lz4 with a NumPy shuffle (see docs/serialization.md, "Why blosc").  The other
codecs are slow enough that a NumPy shuffle does not matter.
"""

from __future__ import annotations

import bz2
import functools
import itertools
import lzma
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from pytest_memo.core.cpus import usable_cpus

__all__ = ["Codec", "map_ordered", "parse_compress", "shuffle", "unshuffle_into"]

CODEC_NAMES = ("lz4", "zlib", "gzip", "bz2", "lzma", "xz")
# lz4's level is Blosc's: 1 (fastest, largest) to 9; Blosc's own default, 5, compressed
# as fast as level 1 on the benchmark arrays and 1% smaller.
_DEFAULT_LEVELS = {"lz4": 5, "zlib": 3, "gzip": 3, "bz2": 3, "lzma": 3, "xz": 3}
_LEVEL_RANGES = {
    "lz4": (1, 9),
    "zlib": (0, 9),
    "gzip": (0, 9),
    "bz2": (1, 9),
    "lzma": (0, 9),
    "xz": (0, 9),
}
MAX_SHUFFLE_ITEMSIZE = 16


@dataclass(frozen=True)
class Codec:
    name: str
    level: int

    def pack(self, chunk: Any, width: int) -> bytes:
        """Shuffle ``chunk`` by ``width`` bytes per item (1: not at all) and compress it."""
        if self.name == "lz4":
            return _blosc_pack(chunk, width, self.level)
        return self._compress(shuffle(chunk, width))

    def unpack_into(self, data: Any, width: int, out: np.ndarray[Any, Any]) -> None:
        """Decompress ``data`` and unshuffle it into ``out`` (uint8, exactly the raw size).

        Raises ValueError when the data does not decompress to exactly that size.
        """
        if self.name == "lz4":
            _blosc_unpack_into(data, out)
            return
        plain = self._decompress(data, out.nbytes)
        if len(plain) != out.nbytes:
            raise ValueError(f"decompressed to {len(plain)} bytes instead of {out.nbytes}")
        unshuffle_into(plain, width, out)

    # The codecs other than lz4, which Blosc handles whole (shuffle included) in pack and
    # unpack_into.

    def _compress(self, data: Any) -> bytes:
        data = memoryview(data).cast("B")  # bz2 and lzma test the truth of their input
        if self.name == "zlib":
            return zlib.compress(data, self.level)
        if self.name == "gzip":
            packer = zlib.compressobj(self.level, zlib.DEFLATED, 31)
            return packer.compress(data) + packer.flush()
        if self.name == "bz2":
            return bz2.compress(data, max(1, self.level))
        return lzma.compress(data, format=self._lzma_format, preset=self.level)

    def _decompress(self, data: Any, raw_size: int) -> bytes:
        data = memoryview(data).cast("B")
        if self.name in ("zlib", "gzip"):
            return zlib.decompress(data, 15 if self.name == "zlib" else 31, raw_size or 1)
        if self.name == "bz2":
            return bz2.decompress(data)
        return lzma.decompress(data, format=self._lzma_format)

    @property
    def _lzma_format(self) -> int:
        return lzma.FORMAT_XZ if self.name == "xz" else lzma.FORMAT_ALONE


def parse_compress(compress: object) -> Codec | None:
    """Turn joblib-style ``compress`` values into a codec (None: store raw).

    Accepted: None/False/0, True (lz4), a codec name, an int 1-9 (zlib at that level, as
    joblib does), or a ``(name, level)`` pair.
    """
    if compress is None or compress is False or compress == 0:
        return None
    if compress is True:
        return Codec("lz4", _DEFAULT_LEVELS["lz4"])
    if isinstance(compress, int) and 1 <= compress <= 9:
        return Codec("zlib", compress)
    if isinstance(compress, str):
        return _named_codec(compress, None)
    if isinstance(compress, tuple) and len(compress) == 2 and isinstance(compress[0], str):
        level = compress[1]
        codec = _named_codec(compress[0], None)
        low, high = _LEVEL_RANGES[codec.name]
        if not isinstance(level, int) or isinstance(level, bool) or not low <= level <= high:
            raise ValueError(
                f"compress level for {codec.name} must be an int from {low} to {high}, "
                f"got {level!r}"
            )
        return _named_codec(compress[0], level)
    raise ValueError(
        f"compress={compress!r} is not understood: use None, True, a level 1-9, "
        f"one of {', '.join(CODEC_NAMES)}, or a (name, level) pair such as ('lz4', 1)"
    )


def _named_codec(name: str, level: int | None) -> Codec:
    if name not in CODEC_NAMES:
        raise ValueError(f"unknown compression {name!r}: choose one of {', '.join(CODEC_NAMES)}")
    return Codec(name, _DEFAULT_LEVELS[name] if level is None else level)


@functools.cache
def _blosc() -> Any:
    """python-blosc, set up on first use: no threads of its own (it runs inside our pool,
    one chunk per call) and the GIL released during each call (it keeps it by default).
    These settings are process-wide, so they wait until lz4 is actually used."""
    import blosc

    blosc.set_nthreads(1)
    blosc.set_releasegil(True)
    return blosc


def _blosc_pack(chunk: Any, width: int, level: int) -> bytes:
    blosc = _blosc()
    mode = blosc.SHUFFLE if width > 1 else blosc.NOSHUFFLE
    data = np.frombuffer(chunk, dtype=np.uint8)
    return bytes(blosc.compress(data, typesize=width, clevel=level, shuffle=mode, cname="lz4"))


def _blosc_unpack_into(data: Any, out: np.ndarray[Any, Any]) -> None:
    blosc = _blosc()
    data = np.frombuffer(data, dtype=np.uint8)  # python-blosc wants a numpy array or bytes
    # Blosc writes as many bytes as its header says: check them before it writes any.
    raw_size, stored_size, _ = blosc.get_cbuffer_sizes(data)
    if raw_size != out.nbytes or stored_size != data.nbytes:
        raise ValueError(
            f"the Blosc header says {raw_size} bytes from {stored_size}, "
            f"expected {out.nbytes} from {data.nbytes}"
        )
    try:
        blosc.decompress_ptr(data, out.ctypes.data)
    except blosc.error as error:
        raise ValueError(str(error)) from None


def shuffle_width(itemsize: int) -> int:
    """Bytes per item to shuffle by; 1 means leave the bytes in order."""
    return itemsize if 1 < itemsize <= MAX_SHUFFLE_ITEMSIZE else 1


def shuffle(chunk: Any, width: int) -> Any:
    """Group byte 0 of every item, then byte 1, ... (a copy; the input is left alone)."""
    if width == 1:
        return chunk
    items = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, width)
    lanes = np.empty((width, items.shape[0]), dtype=np.uint8)
    for lane in range(width):  # a lane at a time: faster than copying the transposed view
        lanes[lane] = items[:, lane]
    return lanes


def unshuffle_into(data: bytes, width: int, out: np.ndarray[Any, Any]) -> None:
    """Undo :func:`shuffle`, writing the restored bytes into ``out`` (a uint8 array)."""
    shuffled = np.frombuffer(data, dtype=np.uint8)
    if width == 1:
        out[:] = shuffled
        return
    # One byte lane at a time: about twice as fast as assigning the transposed view at once.
    lanes, items = shuffled.reshape(width, -1), out.reshape(-1, width)
    for lane in range(width):
        items[:, lane] = lanes[lane]


# -- thread pool ---------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None
_NONE: Any = object()  # no item (items may be None)
T = TypeVar("T")
R = TypeVar("R")


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(usable_cpus(), thread_name_prefix="pytest-memo")
    return _pool


def _forget_pool_after_fork() -> None:
    # A forked child has none of the parent's threads: a pool inherited from it would hang.
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def map_ordered(function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``map`` on the pool, results in order, at most a few chunks in flight (bounded memory).

    A single item is done in this thread: there is nothing to overlap it with, and handing
    it to a pool thread and waiting for it cost more than a small chunk's work (most
    entries are one small pickle stream; reading 10,000 of them spent half its time so)."""
    iterator = iter(items)
    first = next(iterator, _NONE)
    if first is _NONE:
        return
    second = next(iterator, _NONE)
    if second is _NONE:
        yield function(first)
        return
    executor = pool()
    window: deque[Future[R]] = deque()
    limit = 2 * executor._max_workers
    for item in itertools.chain((first, second), iterator):
        window.append(executor.submit(function, item))
        if len(window) >= limit:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()
