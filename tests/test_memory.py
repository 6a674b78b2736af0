"""``pytest_memo.cache``: plain functions memoized in the store, inside and outside pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HELPER = """
import pytest_memo

@pytest_memo.cache(ignore=["verbose"])
def slow(x, verbose=False):
    with open("calls.txt", "a") as calls:
        calls.write(f"{x}\\n")
    return None if x == 0 else {"double": x * 2}
"""


def calls(directory: Path) -> list[str]:
    path = directory / "calls.txt"
    return path.read_text().split() if path.exists() else []


def test_results_are_computed_once_across_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(helper=HELPER)
    pytester.makepyfile(
        test_it="""
        from helper import slow

        def test_values():
            assert slow(3) == {"double": 6}
            assert slow(3, verbose=True) == {"double": 6}  # ignored argument: same entry
            assert slow(0) is None
            assert slow(0) is None  # a stored None is a hit, not a miss
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert calls(pytester.path) == ["3", "0"]
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert calls(pytester.path) == ["3", "0"]


def test_editing_the_function_invalidates(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(helper=HELPER)
    pytester.makepyfile(test_it="from helper import slow\n\ndef test_value():\n    slow(5)\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    pytester.makepyfile(helper=HELPER.replace("x * 2", "x * 3"))
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert calls(pytester.path) == ["5", "5"]


def test_memo_off_calls_the_function_every_time(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(helper=HELPER)
    pytester.makepyfile(test_it="from helper import slow\n\ndef test_value():\n    slow(1)\n")
    for _ in range(2):
        pytester.runpytest_subprocess("--memo-off").assert_outcomes(passed=1)
    assert calls(pytester.path) == ["1", "1"]
    assert not (pytester.path / ".pytest_memo").exists()


def test_works_outside_pytest_with_pytest_memo_dir(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text(HELPER)
    script = "from helper import slow\nprint(slow(4))\n"
    env_dir = tmp_path / "elsewhere"
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env={"PYTEST_MEMO_DIR": str(env_dir), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == "{'double': 8}"
    assert calls(tmp_path) == ["4"]
    assert list(env_dir.glob("v1/entries/*/*.memo"))


def test_ignore_must_name_a_parameter() -> None:
    import pytest_memo

    with pytest.raises(TypeError, match="verbos"):

        @pytest_memo.cache(ignore=["verbos"])
        def function(verbose: bool = False) -> None:
            return None


def test_unpicklable_result_warns_and_is_returned(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import threading, warnings
        import pytest_memo

        @pytest_memo.cache
        def make():
            return threading.Lock()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lock = make()
        print(type(lock).__name__, [str(w.message) for w in caught])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("lock ")
    assert "could not be stored" in result.stdout
