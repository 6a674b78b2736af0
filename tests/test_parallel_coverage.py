"""--par with coverage.py (pytest-cov's --cov, coverage run): the report of a serial run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")

# Each test takes one branch of one function: the report shows 75% only if what every
# worker ran is counted.
SUITE = {
    "shapes": """
    def area(side):
        if side > 0:
            return side * side
        return 0

    def perimeter(side):
        if side > 0:
            return 4 * side
        return 0
    """,
    "test_shapes": """
    import time, pytest, shapes

    @pytest.mark.parametrize("i", range(4))
    def test_area(i):
        time.sleep(0.05)
        assert shapes.area(2) == 4

    @pytest.mark.parametrize("i", range(4))
    def test_perimeter(i):
        time.sleep(0.05)
        assert shapes.perimeter(-1) == 0
    """,
}


def report_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("shapes.py")]
    assert len(lines) == 1, output
    return " ".join(lines[0].split())


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(**SUITE)
    # Workers' data files live in the temporary directory: it must be left empty.
    (pytester.path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(pytester.path / "tmp"))
    return pytester


@pytest.mark.parametrize(
    "options",
    [
        ("--par=2",),
        ("--par=2", "--cov-branch"),
        ("--par=2", "--par-start=spawn"),
        ("--par=2", "--par-mode=thread"),
    ],
)
def test_cov_reports_what_a_serial_run_reports(
    suite: pytest.Pytester, options: tuple[str, ...]
) -> None:
    cov = ("--cov=shapes", "--cov-report=term-missing", *options[1:])
    serial = suite.runpytest_subprocess(*FLAGS, *cov)
    expected = report_line(serial.stdout.str())
    assert expected.endswith("75% 4, 8") or expected.endswith("67% 4, 8"), expected
    parallel = suite.runpytest_subprocess(*FLAGS, *cov, options[0])
    parallel.assert_outcomes(passed=8)
    assert report_line(parallel.stdout.str()) == expected
    assert list((suite.path / "tmp").iterdir()) == []


def test_coverage_run_reports_what_a_serial_run_reports(suite: pytest.Pytester) -> None:
    def report(*args: str) -> str:
        measure = [sys.executable, "-m", "coverage", "run", "--source=shapes", "-m", "pytest"]
        subprocess.run([*measure, *FLAGS, *args], cwd=suite.path, check=True, capture_output=True)
        shown = subprocess.run(
            [sys.executable, "-m", "coverage", "report", "-m"],
            cwd=suite.path,
            check=True,
            capture_output=True,
            text=True,
        )
        return report_line(shown.stdout)

    assert report("--par=2") == report() == "shapes.py 8 2 75% 4, 8"
    assert [path.name for path in Path(suite.path).glob(".coverage*")] == [".coverage"]
