"""``pytest_memo.cache``: plain functions memoized in the store, inside and outside pytest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_memo.store.local import Store

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


def test_after_pytest_main_returns_calls_use_the_store_outside_pytest(tmp_path: Path) -> None:
    # Before, calls after pytest.main() kept the finished run's store: with --memo-off
    # there, every later call computed.
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "test_nothing.py").write_text(
        "from helper import slow\n\ndef test_nothing():\n    slow(6)\n"
    )
    script = (
        "import pytest\n"
        "from helper import slow\n"
        "slow(4)\n"
        "pytest.main(['-q', '-p', 'no:cacheprovider', '--memo-off', 'test_nothing.py'])\n"
        "slow(4); slow(5); slow(5)\n"
    )
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            check=True,
        )
    assert calls(tmp_path) == ["4", "6", "5", "6"]  # 6 computed in each --memo-off run


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


def test_hits_are_recorded_in_the_store(pytester: pytest.Pytester) -> None:
    """Hits count in --memo-show and the summary, and keep entries from being evicted first
    (--memo-max-size evicts the least recently used)."""
    pytester.makepyfile(helper=HELPER)
    pytester.makepyfile(
        test_it="""
        from helper import slow

        def test_values():
            for _ in range(3):
                assert slow(3) == {"double": 6}
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert calls(pytester.path) == ["3"]
    (entry,) = Store(pytester.path / ".pytest_memo").listing()
    assert (entry.fixture, entry.hits) == ("helper:slow", 2)
    assert entry.last_used >= entry.created
    result.stdout.fnmatch_lines(["memo: 2 hits *, 1 miss *"])
    show = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--memo-show")
    show.stdout.fnmatch_lines(["helper:slow *  2 *"])


def test_an_entry_that_no_longer_loads_warns_and_is_recomputed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        thing="""
        import os

        BROKEN = "THING_BROKEN"

        class Thing:
            def __init__(self):
                self.x = 1

            def __setstate__(self, state):
                if os.environ.get(BROKEN):  # through a name: not in the key
                    raise RuntimeError("this Thing cannot be loaded")
                self.__dict__.update(state)
        """,
        helper="""
        import pytest_memo
        from thing import Thing

        @pytest_memo.cache
        def make():
            with open("calls.txt", "a") as calls:
                calls.write("make\\n")
            return Thing()
        """,
        test_it="from helper import make\n\ndef test_it():\n    assert make().x == 1\n",
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("THING_BROKEN", "1")
    broken = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    broken.assert_outcomes(passed=1, warnings=1)
    broken.stdout.fnmatch_lines(
        [
            "*MemoWarning: pytest-memo: removed an entry of function helper:make that no longer "
            "loads (RuntimeError: this Thing cannot be loaded) and recomputed it"
        ]
    )
    monkeypatch.delenv("THING_BROKEN")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert calls(pytester.path) == ["make", "make"]  # the replaced entry loads again


NESTED = """
pytest_plugins = ["pytester"]

def test_an_inner_run_then_a_cached_call(pytester):
    pytester.makepyfile(test_inner="def test_inner():\\n    pass\\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    from helper import slow

    assert slow(5) == {"double": 10}
"""


def test_after_an_inner_pytester_run_a_cached_function_uses_the_outer_run(
    pytester: pytest.Pytester,
) -> None:
    # The inner run ended before the call: the value goes to the outer run's store, and
    # counts in its summary.
    pytester.makepyfile(helper=HELPER, test_nested=NESTED)
    # (The test file is named: the outer run would collect the inner run's files.)
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_nested.py")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["memo: 0 hits*, 1 miss*"])
    second = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_nested.py")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(["memo: 1 hit*, 0 misses*"])


def test_first_calls_from_many_threads_at_once_are_all_counted(pytester: pytest.Pytester) -> None:
    # Before, a thread could see the run's engine before its code fingerprints were set and
    # set up a store of its own, counting apart (392 hits, 2 misses), and counts were added
    # without a lock.
    pytester.makepyfile(
        test_threads="""
        import sys, threading
        import pytest_memo

        @pytest_memo.cache
        def square(x):
            return x * x

        def test_threads():
            sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes
            start = threading.Barrier(8)

            def call(x):
                start.wait()
                for _ in range(50):
                    assert square(x) == x * x

            threads = [threading.Thread(target=call, args=(x,)) for x in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        """
    )
    for _ in range(10):  # a race: each run finds it at times
        result = pytester.runpytest("-p", "no:cacheprovider", "--memo-clear")
        result.stdout.fnmatch_lines(["memo: 392 hits*, 8 misses*"])
    pytester.runpytest("-p", "no:cacheprovider").stdout.fnmatch_lines(
        ["memo: 400 hits*, 0 misses*"]
    )
