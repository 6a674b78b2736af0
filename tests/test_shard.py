"""--shard=I/N: disjoint parts that cover the suite, balanced by recorded durations."""

from __future__ import annotations

import json
import re
import shutil

import pytest

# Tests of very different lengths: a split by count would be badly unbalanced.
SUITE = """
import time, pytest

@pytest.mark.parametrize("i", range(12))
def test_short(i):
    time.sleep(0.01)

@pytest.mark.parametrize("i", range(6))
def test_long(i):
    time.sleep(0.2)

def test_medium():
    time.sleep(0.1)
"""
# With pytest's cache: the durations are kept there.
FLAGS = ("-p", "no:hypothesispytest", "-p", "no:anyio")
DURATIONS = ".pytest_cache/d/pytest_memo"


def ran(result: pytest.RunResult) -> set[str]:
    return set(re.findall(r"(test_suite\.py::\S+) PASSED", result.stdout.str()))


def run_shards(pytester: pytest.Pytester, count: int, *args: str) -> list[set[str]]:
    shards = []
    for index in range(1, count + 1):
        result = pytester.runpytest_subprocess(*FLAGS, *args, "-v", f"--shard={index}/{count}")
        assert result.ret == 0
        shards.append(ran(result))
    return shards


def test_shards_are_disjoint_cover_the_suite_and_are_balanced(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    everything = ran(pytester.runpytest_subprocess(*FLAGS, "-v"))  # records durations
    assert len(everything) == 19
    durations = json.loads((pytester.path / DURATIONS / "durations.json").read_text())
    shards = run_shards(pytester, 3)
    assert set().union(*shards) == everything
    assert sum(len(shard) for shard in shards) == len(everything)  # disjoint
    work = [sum(durations[nodeid] for nodeid in shard) for shard in shards]
    assert max(work) <= 1.2 * min(work), work


def test_without_durations_shards_split_by_count(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    shards = run_shards(pytester, 4)
    assert sorted(len(shard) for shard in shards) == [4, 5, 5, 5]
    assert len(set().union(*shards)) == 19


def test_sharded_runs_do_not_change_the_split_of_later_shards(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest_subprocess(*FLAGS)
    main_file = pytester.path / DURATIONS / "durations.json"
    before = main_file.read_bytes()
    first = run_shards(pytester, 2)
    second = run_shards(pytester, 2)
    assert first == second
    assert main_file.read_bytes() == before
    # A run without --shard folds the shards' measurements in.
    pytester.runpytest_subprocess(*FLAGS)
    assert not list((pytester.path / DURATIONS).glob("durations-shard-*.json"))


def test_deselected_tests_are_reported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(*FLAGS, "--shard=1/2")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] + outcomes["deselected"] == 19
    assert outcomes["deselected"] > 0


def test_shards_combine_with_par(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    shards = []
    for index in (1, 2):
        result = pytester.runpytest_subprocess(*FLAGS, "-v", f"--shard={index}/2", "--par=2")
        shards.append(ran(result))
    assert len(shards[0] | shards[1]) == 19 and not shards[0] & shards[1]


@pytest.mark.parametrize("spec", ["0/2", "3/2", "x", "1-2"])
def test_a_bad_shard_is_a_usage_error(pytester: pytest.Pytester, spec: str) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(*FLAGS, f"--shard={spec}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--shard takes I/N with 1 <= I <= N, such as 2/4*"])


def test_shards_of_ci_jobs_restoring_one_pytest_cache_split_alike(
    pytester: pytest.Pytester,
) -> None:
    # Each CI job restores the pytest cache the main branch saved, runs its shard, and
    # throws its own cache away: every job sees the same durations, so the shards are
    # disjoint and cover the suite.
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest_subprocess(*FLAGS).assert_outcomes(passed=19)
    saved = pytester.path / "saved-cache"
    shutil.copytree(pytester.path / ".pytest_cache", saved)
    shards = []
    for index in (1, 2, 3):
        shutil.rmtree(pytester.path / ".pytest_cache")
        shutil.copytree(saved, pytester.path / ".pytest_cache")
        result = pytester.runpytest_subprocess(*FLAGS, "-v", f"--shard={index}/3")
        shards.append(ran(result))
    assert sum(len(shard) for shard in shards) == 19 == len(set().union(*shards))
    assert not (pytester.path / ".pytest_memo").exists()


def test_cache_clear_forgets_the_durations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest_subprocess(*FLAGS)
    assert (pytester.path / DURATIONS / "durations.json").exists()
    by_count = run_shards(pytester, 4, "--cache-clear")
    assert sorted(len(shard) for shard in by_count) == [4, 5, 5, 5]
