"""Memoized fixtures, measured side by side with plain pytest and pytest-xdist.

A suite with a 2-second session fixture returning a 200 MB array and 30 tests using it,
run cold (store cleared) and warm, serial and with ``-n 2``, against the same suite with
``--memo-off``.  Then the overhead of one store hit, from suites whose function-scoped
fixture is hit once per test, against the same suites with a fixture that costs nothing,
without and with ``PYTEST_MEMO_SECRET`` (signed entries, verified on every load).  Then a
store of 10,000 entries against one of 10: a hit, ``--memo-show``, ``--memo-prune`` (of all
10,000) and rebuilding a damaged index from the entries.

    python benchmarks/memo.py [--repeat N] [--only hits|scale]

Prints markdown tables (medians of N runs); copy them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

SUITE = """
import os, time
import numpy as np
import pytest

@pytest.fixture(scope="session")
@pytest.mark.memo(mmap=True)
def dataset():
    time.sleep(2.0)  # stands for an expensive computation
    return np.arange(25_000_000, dtype=np.float64)  # 200 MB

@pytest.mark.parametrize("i", range(30))
def test_uses_dataset(dataset, i):
    assert dataset[i] == i
"""

HITS = """
import os
import numpy as np
import pytest

BIG = os.environ["BENCH_BIG"] == "1"
CHEAP = os.environ["BENCH_CHEAP"] == "1"
FILES = os.environ.get("BENCH_FILES") == "1"

@pytest.fixture
@pytest.mark.memo(mmap=True)
def value():
    if CHEAP:
        return 0
    if FILES:  # recorded with the entry, checked (stat) on every hit
        for name in ("a.csv", "b.csv", "c.csv"):
            with open(name) as file:
                file.read()
    return np.ones(25_000_000) if BIG else {"answer": 42, "items": list(range(10))}

@pytest.mark.parametrize("i", range(N))
def test_hit(value, i):
    pass
"""


def run(directory: Path, *args: str, env: dict[str, str] | None = None) -> float:
    # Only the plugins under test, so that other installed plugins' start-up is not measured.
    plugins = ["-p", "pytest_memo.memoize.plugin", "-p", "xdist.plugin"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, *args]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=directory,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"benchmark suite failed: {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    return elapsed


def run_output(directory: Path, *args: str) -> str:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    environment = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    command[4:4] = ["-p", "pytest_memo.memoize.plugin"]
    return subprocess.run(
        command, cwd=directory, env=environment, capture_output=True, text=True
    ).stdout


def median(repeat: int, action: object) -> float:
    return statistics.median(action() for _ in range(repeat))  # type: ignore[operator]


def suite_table(directory: Path, repeat: int) -> list[str]:
    (directory / "test_suite.py").write_text(SUITE)
    rows = ["| run | serial | `-n 2` |", "|---|---|---|"]
    results = {}
    for workers in ((), ("-n", "2")):
        off = median(repeat, lambda w=workers: run(directory, "--memo-off", *w))
        cold = median(repeat, lambda w=workers: run(directory, "--memo-clear", *w))
        run(directory, *workers)  # make sure the store is filled
        warm = median(repeat, lambda w=workers: run(directory, *w))
        results[workers] = (off, cold, warm)
    serial, xdist = results[()], results[("-n", "2")]
    labels = ("without memo (`--memo-off`)", "memo, cold store", "memo, warm store")
    for index, label in enumerate(labels):
        rows.append(f"| {label} | {serial[index]:.2f} s | {xdist[index]:.2f} s |")
    rows.append(
        f"| speed-up warm vs without memo | {serial[0] / serial[2]:.1f}x | "
        f"{xdist[0] / xdist[2]:.1f}x |"
    )
    return rows


def hit_table(directory: Path, repeat: int, tests: int) -> list[str]:
    (directory / "test_hits.py").write_text(HITS.replace("range(N)", f"range({tests})"))
    rows = ["| value | per-hit overhead | target |", "|---|---|---|"]
    for name in ("a.csv", "b.csv", "c.csv"):
        (directory / name).write_text("x,y\n" * 1000)
    for big, files, label, target, secret in (
        ("0", "0", "small dict", "< 2 ms", ""),
        ("0", "1", "small dict, 3 data files read (checked on each hit)", "< 2 ms", ""),
        ("1", "0", "200 MB array, mmap=True", "< 5 ms", ""),
        ("0", "0", "small dict, signed", "< 2 ms", "bench secret"),
        ("1", "0", "200 MB array, mmap=True, signed", "< 5 ms", "bench secret"),
    ):
        env = {
            "BENCH_BIG": big,
            "BENCH_CHEAP": "0",
            "BENCH_FILES": files,
            "PYTEST_MEMO_SECRET": secret,
        }
        run(directory, "test_hits.py", "--memo-clear", env=env)  # fill the store
        warm = median(repeat, lambda e=env: run(directory, "test_hits.py", env=e))
        cheap = {"BENCH_BIG": big, "BENCH_CHEAP": "1", "BENCH_FILES": files}
        base = median(repeat, lambda e=cheap: run(directory, "--memo-off", "test_hits.py", env=e))
        rows.append(f"| {label} | {(warm - base) / tests * 1000:.2f} ms | {target} |")
    return rows


def cutoff_table(repeat: int) -> list[str]:
    """Early cutoff: what hashing an upstream memoized value costs (once per value computed;
    a hit reads the digest kept in its manifest)."""
    import numpy as np

    from pytest_memo.memoize.keys import CodeFingerprints

    fingerprints = CodeFingerprints(Path.cwd())
    values = {
        "small dict": {"answer": 42, "items": list(range(10))},
        "200 MB float64 array": np.arange(25_000_000, dtype=np.float64),
        "100,000 short strings": [f"row {i}" for i in range(100_000)],
        "20,000 small dicts": [{"id": i, "name": f"n{i}", "score": i / 3} for i in range(20_000)],
    }
    rows = ["| upstream value | hashing it |", "|---|---|"]
    for label, value in values.items():
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            fingerprints.data_digest(value)
            times.append(time.perf_counter() - started)
        rows.append(f"| {label} | {statistics.median(times) * 1000:.2f} ms |")
    return rows


SCALE_HITS = """
import pytest

@pytest.fixture
@pytest.mark.memo
def value():
    return {"answer": 42, "items": list(range(10))}

@pytest.mark.parametrize("i", range(N))
def test_hit(value, i):
    pass
"""


def fill(store_dir: Path, count: int) -> None:
    """``count`` entries of 100 parametrized fixtures, each with its manifest, written
    through the store as runs write them (``--memo-show`` reads the manifests)."""
    import hashlib

    from pytest_memo.memoize import explain
    from pytest_memo.store.local import EntryInfo, Store

    store = Store(store_dir)
    store.prepare()
    for number in range(count):
        key = hashlib.sha256(str(number).encode()).hexdigest()[:32]
        fixture = f"filler_{number % 100}"
        info = EntryInfo(fixture, "conftest.py", f"{fixture}[{number}]", 0.1, time.time())
        store.write(key, info, {"number": number, "data": list(range(20))})
        parts = {
            "code": [key, None, "conftest.py"],
            "python": ["3", "3", None],
            "param": [key, str(number), None],
        }
        manifest = explain.Manifest({"created": info.created, "parts": parts})
        explain.write_manifest(store, key, manifest)
    store.close()


def rebuild_seconds(live: Path, count: int) -> float:
    """``listing()`` of a store whose index was overwritten with junk: rebuilt from files."""
    from pytest_memo.store.local import Store

    (live / "v1" / "index.sqlite").write_text("damaged\n")
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = Store(live)
        listed = len(store.listing())
        store.close()
    assert listed == count, listed
    return time.perf_counter() - started


def scale_table(directory: Path, repeat: int, tests: int) -> list[str]:
    """Each round runs every operation on both stores, one after the other, so that a
    noisy spell of the shared machine hits both; per-hit figures are medians of the
    rounds' differences."""
    import shutil

    (directory / "test_scale.py").write_text(SCALE_HITS.replace("range(N)", f"range({tests})"))
    counts = (10, 10_000)
    # Named with a dot, as .pytest_memo is: pytest does not collect in them.
    for count in counts:
        fill(directory / f".template-{count}", count)

    def fresh(count: int) -> str:
        live = directory / f".store-{count}"
        shutil.rmtree(live, ignore_errors=True)
        shutil.copytree(directory / f".template-{count}", live, symlinks=True)
        run(directory, "test_scale.py", f"--memo-dir={live}")  # the suite's own entry
        return f"--memo-dir={live}"

    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(repeat):
        for count in counts:
            where = fresh(count)
            measured = {
                "warm": run(directory, "test_scale.py", where),
                "show": run(directory, "--memo-show", where),
                # count entries and the suite's own
                "rebuild": rebuild_seconds(directory / f".store-{count}", count + 1),
                # No path on the command line: a complete run, which prunes all unused.
                "prune": run(directory, where, "--memo-prune"),
            }
            left = run_output(directory, "--memo-show", where)
            assert "1 entry of 1 fixture" in left, left
            for name, seconds in measured.items():
                times.setdefault((count, name), []).append(seconds)

    def med(count: int, name: str) -> float:
        return statistics.median(times[(count, name)])

    def paired(first: list[float], second: list[float]) -> float:
        return statistics.median(a - b for a, b in zip(first, second, strict=True))

    per_hit = paired(times[(10_000, "warm")], times[(10, "warm")]) / tests * 1000
    prune_excess = paired(times[(10_000, "prune")], times[(10_000, "warm")])
    rows = ["| operation | 10 entries | 10,000 entries | target |", "|---|---|---|---|"]
    rows.append(
        f"| warm run of {tests} hits (difference per hit: {per_hit:+.3f} ms) | "
        f"{med(10, 'warm'):.2f} s | {med(10_000, 'warm'):.2f} s | ≤ +1 ms per hit |"
    )
    rows.append(
        f"| `--memo-show` (whole run) | {med(10, 'show'):.2f} s | "
        f"{med(10_000, 'show'):.2f} s | < 1 s |"
    )
    rows.append(
        f"| run with `--memo-prune` removing all other entries (more than a warm run: "
        f"{prune_excess:+.2f} s) | {med(10, 'prune'):.2f} s | {med(10_000, 'prune'):.2f} s "
        "| < 3 s |"
    )
    rows.append(
        f"| rebuilding a damaged index from the entries | {med(10, 'rebuild'):.3f} s | "
        f"{med(10_000, 'rebuild'):.2f} s | < 5 s |"
    )
    return rows


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import pytest

    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"pytest {pytest.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tests", type=int, default=1000, help="tests in the per-hit suites")
    parser.add_argument("--only", choices=("hits", "scale", "cutoff"), default=None)
    options = parser.parse_args()
    if options.only == "cutoff":
        print(f"Machine: {machine()}\n")
        print("\n".join(cutoff_table(max(options.repeat, 5))))
        return
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as temporary:

        def project(name: str) -> Path:
            """A directory of its own per table: the complete runs of one (a prune with no
            path given) must not collect another's tests."""
            directory = Path(temporary) / name
            directory.mkdir()
            (directory / "pytest.ini").write_text("[pytest]\n")
            return directory

        print(f"Machine: {machine()}\n")
        if options.only is None:
            print("Session fixture (2 s, 200 MB) used by 30 tests, wall time of the whole run:\n")
            print("\n".join(suite_table(project("suite"), options.repeat)))
        if options.only in (None, "hits"):
            print(f"\nStore hit overhead ({options.tests} tests, function-scoped fixture):\n")
            print("\n".join(hit_table(project("hits"), options.repeat, options.tests)))
        if options.only in (None, "scale"):
            print("\nA store of 10,000 entries against one of 10 (whole pytest runs):\n")
            print("\n".join(scale_table(project("scale"), options.repeat, options.tests)))
    print(textwrap.dedent(f"\nmedians of {options.repeat} runs"))


if __name__ == "__main__":
    main()
