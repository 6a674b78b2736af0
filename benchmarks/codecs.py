"""Which library compresses pytest-memo's lz4 chunks: the measurement behind the choice.

Three ways to byte-shuffle and lz4-compress a 100 MB float64 array (random, then smooth),
in memory, without checksums or files:

- **blosc** (python-blosc, what ``dump(compress="lz4")`` uses): one C call per 1 MiB chunk
  on pytest-memo's thread pool, shuffle included; decompressed straight into the array;
- **python-lz4 + NumPy shuffle** (what pytest-memo used before): the same chunks on the
  same pool, a NumPy byte shuffle, then ``lz4.block`` in its fast mode;
- **blosc2** ``compress2``/``decompress2`` on the whole array with all cores.

    pip install lz4 blosc2   # the two alternatives are not dependencies
    python benchmarks/codecs.py [--repeat N]

Prints medians of N runs (7 by default) and each alternative's time over blosc's (above 1:
blosc is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import blosc2
import lz4.block
import numpy as np

from pytest_memo.core import codecs

CHUNK = 1 << 20
ITEMS = 12_500_000


def median_time(function: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def chunked(raw: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    return [raw[low : low + CHUNK] for low in range(0, raw.nbytes, CHUNK)]


def ours(raw: np.ndarray[Any, Any]) -> tuple[Callable[[], Any], Callable[[], Any], int]:
    codec = codecs.parse_compress("lz4")
    assert codec is not None
    pieces = chunked(raw)
    packed = list(codecs.map_ordered(lambda piece: codec.pack(piece, 8), pieces))

    def decompress() -> Any:
        out = np.empty_like(raw)
        jobs = zip(range(0, raw.nbytes, CHUNK), packed, strict=True)
        for _ in codecs.map_ordered(
            lambda job: codec.unpack_into(job[1], 8, out[job[0] : job[0] + CHUNK]), jobs
        ):
            pass
        return out

    def compress() -> Any:
        return list(codecs.map_ordered(lambda piece: codec.pack(piece, 8), pieces))

    assert np.array_equal(decompress(), raw)
    return compress, decompress, sum(map(len, packed))


def python_lz4(raw: np.ndarray[Any, Any]) -> tuple[Callable[[], Any], Callable[[], Any], int]:
    pieces = chunked(raw)

    def pack(piece: np.ndarray[Any, Any]) -> bytes:
        shuffled = codecs.shuffle(piece, 8)
        return bytes(lz4.block.compress(shuffled, mode="fast", acceleration=4, store_size=False))

    packed = list(codecs.map_ordered(pack, pieces))

    def decompress() -> Any:
        out = np.empty_like(raw)

        def unpack(job: tuple[int, bytes]) -> None:
            target = out[job[0] : job[0] + CHUNK]
            plain = lz4.block.decompress(job[1], uncompressed_size=target.nbytes)
            codecs.unshuffle_into(plain, 8, target)

        for _ in codecs.map_ordered(unpack, zip(range(0, raw.nbytes, CHUNK), packed, strict=True)):
            pass
        return out

    def compress() -> Any:
        return list(codecs.map_ordered(pack, pieces))

    assert np.array_equal(decompress(), raw)
    return compress, decompress, sum(map(len, packed))


def whole_blosc2(raw: np.ndarray[Any, Any]) -> tuple[Callable[[], Any], Callable[[], Any], int]:
    cores = os.cpu_count() or 1
    params = {
        "codec": blosc2.Codec.LZ4,
        "filters": [blosc2.Filter.SHUFFLE],
        "typesize": 8,
        "nthreads": cores,
    }
    blob = blosc2.compress2(raw, **params)

    def decompress() -> Any:
        out = np.empty_like(raw)
        blosc2.decompress2(blob, dst=out, nthreads=cores)
        return out

    assert np.array_equal(decompress(), raw)
    return lambda: blosc2.compress2(raw, **params), decompress, len(blob)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement")
    repeat = parser.parse_args().repeat
    # As in serialize.py: glibc's mmap threshold up, so chunk buffers come from the heap.
    block = bytes(30_000_000)
    del block
    arrays = {
        "random": np.random.default_rng(0).random(ITEMS),
        "smooth": np.sin(np.linspace(0, 100, ITEMS)),
    }
    contenders = [("blosc", ours), ("python-lz4 + numpy", python_lz4), ("blosc2", whole_blosc2)]
    print("| array | library | compress | decompress | size | vs blosc: compress, decompress |")
    print("|---|---|---|---|---|---|")
    for name, array in arrays.items():
        raw = array.view(np.uint8)
        base: tuple[float, float] | None = None
        for library, make in contenders:
            compress, decompress, size = make(raw)
            times = median_time(compress, repeat), median_time(decompress, repeat)
            base = base or times
            ratio = f"{times[0] / base[0]:.2f}x, {times[1] / base[1]:.2f}x"
            print(
                f"| {name} | {library} | {times[0] * 1e3:.0f} ms | {times[1] * 1e3:.0f} ms "
                f"| {size / 1e6:.1f} MB | {ratio} |"
            )
    versions = (blosc2.__version__, lz4.VERSION, np.__version__)
    print(f"\nblosc2 {versions[0]}, lz4 {versions[1]}, numpy {versions[2]}")


if __name__ == "__main__":
    main()
