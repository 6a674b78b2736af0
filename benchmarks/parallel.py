"""The parallel runner, measured side by side with serial pytest and pytest-xdist.

    python benchmarks/parallel.py [--repeat N] [--scenario NAME ...]
                                  [--pyargs PACKAGE ... [--pyargs-repeat N]]

Each figure is the wall time of a complete pytest process (median of N runs, the variants
taking turns), with only
pytest-memo and pytest-xdist loaded. ``--pyargs`` adds real-world suites: the tests an
installed package ships (for example ``--pyargs networkx numpy.lib``), comparing outcome
counts and times of serial, ``-n 2`` and ``--par=2`` (one run each unless
``--pyargs-repeat`` says otherwise: they take minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLEEPY = """
import time, pytest

@pytest.mark.parametrize("i", range(160))
def test_sleep(i):
    time.sleep(0.025)

@pytest.mark.parametrize("i", range(100))
def test_trivial(i):
    pass
"""
CPU_BOUND = """
import pytest

@pytest.mark.parametrize("i", range(40))
def test_work(i):
    total = 0
    for k in range(600_000):
        total += k * k % 7
    assert total > 0
"""
ONE = "def test_one():\n    pass\n"
MANY = """
import pytest

@pytest.mark.parametrize("i", range(2000))
def test_trivial(i):
    pass
"""
FIXTURE_CONFTEST = """
import time, pytest

@pytest.fixture(scope="session", params=["a", "b", "c"])
def resource(request):
    time.sleep(0.3)  # an expensive set-up: a database, a trained model
    return request.param
"""
FIXTURE_MODULE = """
import pytest

@pytest.mark.parametrize("i", range(5))
def test_uses_it(resource, i):
    assert resource
"""
# 60 short tests (4 modules x 5 x 3 parameters) of a session fixture with 3 parameters.
FIXTURE = {"conftest.py": FIXTURE_CONFTEST} | {
    f"test_uses_{module}.py": FIXTURE_MODULE for module in range(4)
}
SCENARIOS = ("sleepy", "cpu", "one", "many", "fixture")
PLUGINS = (
    "-p",
    "pytest_memo.memoize.plugin",
    "-p",
    "pytest_memo.parallel.plugin",
    "-p",
    "pytest_memo.timing.plugin",
    "-p",
    "xdist.plugin",
)


def run(directory: Path, *args: str) -> tuple[float, str]:
    # pytest's cache is kept, as on a user's machine: --par orders long tests first by the
    # durations it records there.
    command = [sys.executable, "-m", "pytest", "-q", *PLUGINS, *args]
    environment = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    # Bytecode is written, as on a user's machine: without it, every run would compile
    # the modules changed since the last .pyc again (a fixed cost that hides ratios).
    environment.pop("PYTHONDONTWRITEBYTECODE", None)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=directory, env=environment, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    return elapsed, summary


def scenario(
    title: str,
    source: str | dict[str, str],
    variants: list[tuple[str, tuple[str, ...]]],
    repeat: int,
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        (directory / "pytest.ini").write_text("[pytest]\n")
        files = source if isinstance(source, dict) else {"test_suite.py": source}
        for name, text in files.items():
            (directory / name).write_text(text)
        # Round-robin: a noisy spell on the shared machine slows one run of each variant,
        # not every run of one variant.
        runs: dict[str, list[float]] = {label: [] for label, _ in variants}
        for _, args in variants:  # warm-up, not timed: bytecode, page cache, durations
            run(directory, *args)
        for _ in range(repeat):
            for label, args in variants:
                runs[label].append(run(directory, *args)[0])
        times = {label: statistics.median(seconds) for label, seconds in runs.items()}
    serial = times["serial"]
    print(f"\n{title}\n")
    print("| run | wall time | vs serial |")
    print("|---|---|---|")
    for label, seconds in times.items():
        print(f"| {label} | {seconds:.2f} s | {serial / seconds:.2f}x |")
    return times


def verdict(text: str, met: bool) -> None:
    print(f"- {text}: {'met' if met else 'NOT met'}")


def outcome_counts(summary: str) -> dict[str, int]:
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", summary) if word != "in"}


def real_world(package: str, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        variants = (("serial", ()), ("-n 2", ("-n", "2")), ("--par=2", ("--par=2",)))
        # Round-robin, as in scenario(): a noisy spell slows one run of each variant.
        runs: dict[str, list[tuple[float, str]]] = {label: [] for label, _ in variants}
        for _ in range(repeat):
            for label, args in variants:
                runs[label].append(run(directory, "--pyargs", package, *args))
        rows = [
            (label, statistics.median(elapsed for elapsed, _ in done), outcome_counts(done[-1][1]))
            for label, done in runs.items()
        ]
    print(f"\nReal-world suite: `--pyargs {package}`\n")
    print("| run | wall time | outcomes |")
    print("|---|---|---|")
    for label, seconds, counts in rows:
        outcome = ", ".join(f"{n} {word}" for word, n in sorted(counts.items()))
        print(f"| {label} | {seconds:.2f} s | {outcome} |")
    serial, xdist, par = rows
    verdict("same outcome counts as serial", par[2] == serial[2])
    verdict(
        f"--par=2 at least 1.2x sooner than -n 2 ({xdist[1] / par[1]:.2f}x)",
        1.2 * par[1] <= xdist[1],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scenario",
        nargs="*",
        choices=SCENARIOS,
        default=list(SCENARIOS),
        help="the synthetic scenarios to run (default: all; none with --pyargs alone: "
        "--scenario with no name)",
    )
    parser.add_argument("--pyargs", nargs="*", default=[], metavar="PACKAGE")
    parser.add_argument("--pyargs-repeat", type=int, default=1, metavar="N")
    options = parser.parse_args()
    import pytest
    import xdist

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, pytest {pytest.__version__}, "
        f"pytest-xdist {xdist.__version__}; medians of {options.repeat} runs"
    )
    chosen = set(options.scenario)
    two = [("serial", ()), ("-n 2", ("-n", "2")), ("--par=2", ("--par=2",))]
    if "sleepy" in chosen:
        sleepy = scenario(
            "160 tests sleeping 25 ms and 100 trivial tests",
            SLEEPY,
            [
                ("serial", ()),
                ("-n 8", ("-n", "8")),
                ("--par=8", ("--par=8",)),
                ("--par=8 --par-mode=thread", ("--par=8", "--par-mode=thread")),
            ],
            options.repeat,
        )
        verdict("--par=8 at least 5x faster than serial", sleepy["serial"] >= 5 * sleepy["--par=8"])
        verdict(
            "--par=8 at least 1.25x faster than -n 8", sleepy["-n 8"] >= 1.25 * sleepy["--par=8"]
        )
        thread = sleepy["--par=8 --par-mode=thread"]
        verdict("thread mode at least 4x faster than serial", sleepy["serial"] >= 4 * thread)
    if "cpu" in chosen:
        cpu = scenario("40 CPU-bound tests", CPU_BOUND, two, options.repeat)
        verdict("--par=2 at least 1.6x faster than serial", cpu["serial"] >= 1.6 * cpu["--par=2"])
    if "one" in chosen:
        one = scenario("One trivial test", ONE, two, options.repeat)
        verdict("--par=2 adds at most 0.15 s", one["--par=2"] - one["serial"] <= 0.15)
    if "many" in chosen:
        many = scenario("2000 trivial tests", MANY, two, options.repeat)
        verdict("--par=2 within 1.15x of serial", many["--par=2"] <= 1.15 * many["serial"])
    if "fixture" in chosen:
        scope = ("--par=2 --par-dist=scope", ("--par=2", "--par-dist=scope"))
        fixture = scenario(
            "60 short tests of a session fixture with 3 parameters (0.3 s set-up each)",
            FIXTURE,
            [*two, scope],
            options.repeat,
        )
        verdict("--par=2 faster than -n 2", fixture["--par=2"] < fixture["-n 2"])
        verdict("--par-dist=scope faster than -n 2", fixture[scope[0]] < fixture["-n 2"])
    for package in options.pyargs:
        real_world(package, options.pyargs_repeat)


if __name__ == "__main__":
    main()
