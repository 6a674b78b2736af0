"""Hashing and serialization, measured side by side with joblib, pickle and numpy.

Three datasets: a 100 MB random float64 array, a 100 MB smooth float64 array, and a
"mixed" dict of three 8 MB arrays, 100,000 short strings and 20,000 small records.  For
each: ``pytest_memo.hash`` against ``joblib.hash``; uncompressed ``dump``/``load`` against
joblib, pickle (protocol 5), numpy and a plain write/read of the same bytes; lz4
``dump``/``load`` against joblib's lz4; and opening a file memory-mapped.  The choice of
compression library is measured by ``benchmarks/codecs.py``.

    python benchmarks/serialize.py [--quick] [--repeat N]

Every figure is the median of N runs (5, or 3 with ``--quick``), in one process, with the
data already in memory.  Files go to a fresh temporary directory on the same disk as the
repository, and each output file is deleted before every write, so each write creates a
new file; reads come from the page cache (the file was just written).  Prints a markdown
table to stdout (progress goes to stderr); copy it into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc
import cloudpickle
import joblib
import numpy as np
import xxhash

import pytest_memo
from pytest_memo import dump, load

REPO = Path(__file__).resolve().parent.parent
MB = 1e6
ARRAY_ITEMS = 12_500_000  # 100 MB of float64


# -- data ----------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    value: Any
    nbytes: int  # what throughputs are computed from
    is_array: bool


def datasets() -> list[Dataset]:
    random = np.random.default_rng(0).random(ARRAY_ITEMS)
    smooth = np.sin(np.linspace(0, 100, ARRAY_ITEMS))
    rng = np.random.default_rng(1)
    mixed = {
        "arrays": [rng.random(1_000_000) for _ in range(3)],
        "strings": [f"item-{i}-{i * 7919 % 100003}" for i in range(100_000)],
        "records": [
            {"id": i, "name": f"r{i}", "value": i * 0.5, "tags": ["a", "b"]} for i in range(20_000)
        ],
    }
    # The mixed dict has no single "size": use the length of its plain pickle.
    mixed_bytes = len(pickle.dumps(mixed, protocol=5))
    return [
        Dataset("random 100 MB", random, random.nbytes, True),
        Dataset("smooth 100 MB", smooth, smooth.nbytes, True),
        Dataset(f"mixed ({mixed_bytes / MB:.0f} MB pickled)", mixed, mixed_bytes, False),
    ]


def touch(value: Any) -> None:
    """Read every array once, so no timing pays for first-touch page faults."""
    if isinstance(value, np.ndarray):
        value.sum()
    elif isinstance(value, dict):
        for item in value.values():
            touch(item)
    elif isinstance(value, list):
        for item in value:
            touch(item)


def same(a: Any, b: Any) -> bool:
    return bool(pytest_memo.hash(a) == pytest_memo.hash(b))


# -- timing --------------------------------------------------------------------


def median_time(
    function: Callable[[], Any], repeat: int, before: Callable[[], None] | None = None
) -> float:
    """Median wall time of ``function()``; ``before()`` runs untimed ahead of each call."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        gc.collect()
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        del result  # unmapping or freeing the result is not part of the measurement
    return statistics.median(times)


def remover(path: Path) -> Callable[[], None]:
    return lambda: path.unlink(missing_ok=True)


def fmt_time(seconds: float, nbytes: int | None = None) -> str:
    text = f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.0f} ms"
    if nbytes is not None:
        text += f" ({nbytes / MB / seconds:,.0f} MB/s)"
    return text


# -- rows ----------------------------------------------------------------------


@dataclass
class Row:
    dataset: str
    operation: str
    ours: str
    peer: str
    ratio: str
    target: str
    met: str


def speed_row(
    data: Dataset,
    operation: str,
    ours: float,
    peer_name: str,
    peer: float,
    minimum: float | None = None,
    throughput: bool = True,
) -> Row:
    """Ratio = peer time / our time: above 1 means ours is faster."""
    nbytes = data.nbytes if throughput else None
    ratio = peer / ours
    return Row(
        data.name,
        operation,
        fmt_time(ours, nbytes),
        f"{peer_name} {fmt_time(peer, nbytes)}",
        f"{ratio:.2f}x",
        "—" if minimum is None else f"≥ {minimum:g}x",
        "—" if minimum is None else ("yes" if ratio >= minimum else "no"),
    )


def size_row(
    data: Dataset, operation: str, ours: int, peer_name: str, peer: int, maximum: float | None
) -> Row:
    """Ratio = our file size / the peer's: below 1 means ours is smaller."""
    ratio = ours / peer
    return Row(
        data.name,
        operation,
        f"{ours / MB:.1f} MB",
        f"{peer_name} {peer / MB:.1f} MB",
        f"{ratio:.2f}x",
        "—" if maximum is None else f"≤ {maximum:g}x",
        "—" if maximum is None else ("yes" if ratio <= maximum else "no"),
    )


# -- the measurements ----------------------------------------------------------


def bench_hash(data: Dataset, repeat: int) -> list[Row]:
    ours = median_time(lambda: pytest_memo.hash(data.value), repeat)
    theirs = median_time(lambda: joblib.hash(data.value), repeat)
    target = 20.0 if data.is_array else 3.0
    return [speed_row(data, "hash", ours, "joblib.hash", theirs, target)]


def write_pickle(value: Any, path: Path) -> None:
    with open(path, "wb") as file:
        pickle.dump(value, file, protocol=5)


def read_pickle(path: Path) -> Any:
    with open(path, "rb") as file:
        return pickle.load(file)


def write_plain(payload: Any, path: Path) -> None:
    with open(path, "wb") as file:
        file.write(payload)


def read_plain(path: Path, nbytes: int) -> np.ndarray[Any, Any]:
    # Into a page-aligned array.  numpy's large arrays start 16 bytes into a page, and the
    # kernel's copy from the page cache to an address 16 bytes past the file offset (modulo
    # 4096) runs at half speed on some CPUs (4K aliasing; ~2x here), which would make this
    # "floor" slower than the loaders it is there to bound.
    spare = np.empty(nbytes + 4096, dtype=np.uint8)
    start = -spare.ctypes.data % 4096
    out = spare[start : start + nbytes]
    with open(path, "rb", buffering=0) as file:
        view, filled = out.data, 0
        while filled < nbytes:
            filled += file.readinto(view[filled:])
    return out


def bench_uncompressed(data: Dataset, directory: Path, repeat: int) -> list[Row]:
    value = data.value
    ours_path = directory / "ours.memo"
    ours_dump = median_time(lambda: dump(value, ours_path), repeat, remover(ours_path))
    ours_load = median_time(lambda: load(ours_path), repeat)
    assert same(load(ours_path), value)

    # A plain write of the same bytes: the array's memory, or for the mixed dict the bytes
    # of our own file (the floor for writing that much, with nothing to serialize).
    payload = value.data if data.is_array else ours_path.read_bytes()
    payload_size = memoryview(payload).nbytes

    # Each peer: dump label, load label, file suffix, write, read, and the targets ours must
    # meet against it (None: shown for reference only).
    peers: list[tuple[str, str, str, Callable[[Path], Any], Callable[[Path], Any], Any, Any]] = [
        (
            "joblib.dump",
            "joblib.load",
            "joblib",
            lambda p: joblib.dump(value, p),
            joblib.load,
            1.0,
            1.0,
        ),
        (
            "pickle p5",
            "pickle p5",
            "pkl",
            lambda p: write_pickle(value, p),
            read_pickle,
            None,
            None,
        ),
    ]
    if data.is_array:
        peers.append(
            ("numpy.save", "numpy.load", "npy", lambda p: np.save(p, value), np.load, None, None)
        )
    peers.append(
        (
            "plain write",
            "plain read",
            "raw",
            lambda p: write_plain(payload, p),
            lambda p: read_plain(p, payload_size),
            0.8 if data.is_array else None,
            None,
        )
    )

    dump_rows, load_rows = [], []
    for dump_name, load_name, suffix, write, read, dump_target, load_target in peers:
        path = directory / f"peer.{suffix}"
        written = median_time(lambda: write(path), repeat, remover(path))  # noqa: B023
        read_time = median_time(lambda: read(path), repeat)  # noqa: B023
        if suffix != "raw":
            assert same(read(path), value), dump_name
        dump_rows.append(speed_row(data, "dump", ours_dump, dump_name, written, dump_target))
        load_rows.append(speed_row(data, "load", ours_load, load_name, read_time, load_target))
        path.unlink()
    ours_path.unlink()
    return dump_rows + load_rows


def bench_lz4(data: Dataset, directory: Path, repeat: int) -> list[Row]:
    value = data.value
    ours_path, peer_path = directory / "ours-lz4.memo", directory / "peer-lz4.joblib"
    ours_dump = median_time(
        lambda: dump(value, ours_path, compress="lz4"), repeat, remover(ours_path)
    )
    ours_load = median_time(lambda: load(ours_path), repeat)
    peer_dump = median_time(
        lambda: joblib.dump(value, peer_path, compress="lz4"), repeat, remover(peer_path)
    )
    peer_load = median_time(lambda: joblib.load(peer_path), repeat)
    assert same(load(ours_path), value) and same(joblib.load(peer_path), value)
    ours_size, peer_size = ours_path.stat().st_size, peer_path.stat().st_size
    ours_path.unlink()
    peer_path.unlink()
    size_target = 0.7 if data.name.startswith("smooth") else None
    return [
        speed_row(data, "lz4 dump", ours_dump, "joblib.dump", peer_dump, 1.5),
        speed_row(data, "lz4 load", ours_load, "joblib.load", peer_load, 2.0),
        size_row(data, "lz4 file size", ours_size, "joblib", peer_size, size_target),
    ]


def bench_mmap(data: Dataset, directory: Path, repeat: int) -> list[Row]:
    value = data.value
    ours_path, peer_path = directory / "ours-mmap.memo", directory / "peer-mmap.joblib"
    dump(value, ours_path)
    joblib.dump(value, peer_path)
    ours = median_time(lambda: load(ours_path, mmap_mode="r"), repeat)
    theirs = median_time(lambda: joblib.load(peer_path, mmap_mode="r"), repeat)
    mapped = load(ours_path, mmap_mode="r")
    assert isinstance(mapped, np.memmap) and same(mapped, value)
    del mapped
    ours_path.unlink()
    peer_path.unlink()
    row = speed_row(data, "mmap open", ours, "joblib.load", theirs, throughput=False)
    row.target = "< 5 ms"
    row.met = "yes" if ours < 0.005 else "no"
    return [row]


# -- report --------------------------------------------------------------------


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    versions = ", ".join(
        f"{module.__name__} {getattr(module, '__version__', None) or module.VERSION}"
        for module in (pytest_memo, np, joblib, blosc, xxhash, cloudpickle)
    )
    return [
        f"- CPU: {model}, {os.cpu_count()} cores ({usable} usable)",
        f"- {platform.python_implementation()} {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- {versions}",
        f"- pytest-memo commit {commit}",
    ]


def table(rows: list[Row]) -> list[str]:
    header = ["dataset", "operation", "ours", "peer", "ratio", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.dataset, row.operation, row.ours, row.peer, row.ratio, row.target, row.met]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="median of 3 runs instead of 5")
    parser.add_argument("--repeat", type=int, help="runs per measurement (overrides --quick)")
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 5)

    started = time.perf_counter()
    # Same disk as the repository (page cache, not tmpfs): the system temporary directory
    # if it is on that device, else a directory inside the repository.
    parent = tempfile.gettempdir()
    if os.stat(parent).st_dev != os.stat(REPO).st_dev:
        parent = str(REPO)
    directory = Path(tempfile.mkdtemp(prefix="pytest-memo-bench-", dir=parent))
    try:
        print("building the datasets...", file=sys.stderr)
        data = datasets()
        for item in data:
            touch(item.value)
        # glibc raises its mmap threshold when a large block (up to 32 MiB) is freed; from
        # then on, blocks of a few MB come from the heap instead of fresh zeroed pages.
        # joblib's lz4 writes 16 MB temporary chunks, and its dump runs about twice as fast
        # once the threshold is up: raise it now, so peers get their best case throughout.
        block = bytes(30_000_000)
        del block
        # Imports, the thread pool and joblib's machinery get going before any timing.
        warm = directory / "warm"
        for compress in (None, "lz4"):
            dump(np.ones(100_000), warm, compress=compress)
            load(warm)
            joblib.dump(np.ones(100_000), warm, compress=compress or 0)
            joblib.load(warm)
        warm.unlink()

        rows: list[Row] = []
        arrays = [item for item in data if item.is_array]
        sections: list[tuple[str, Callable[[Dataset], list[Row]], list[Dataset]]] = [
            ("hashing", lambda d: bench_hash(d, repeat), data),
            ("uncompressed", lambda d: bench_uncompressed(d, directory, repeat), data),
            ("lz4", lambda d: bench_lz4(d, directory, repeat), data),
            ("mmap", lambda d: bench_mmap(d, directory, repeat), arrays),
        ]
        for section, run, items in sections:
            for item in items:
                print(f"{section}: {item.name}...", file=sys.stderr)
                rows.extend(run(item))
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    elapsed = time.perf_counter() - started
    lines = [
        f"Median of {repeat} runs; ratio = peer time / our time (above 1: ours is faster), "
        "or for file sizes ours / peer (below 1: ours is smaller).",
        "",
        *table(rows),
        "",
        *machine(),
        f"- files in a fresh directory under {parent} (same disk as the repository); "
        f"whole run {elapsed:.0f} s",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
