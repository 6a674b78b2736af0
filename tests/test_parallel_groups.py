"""pytest --par: what goes together (xdist_group, fixture parameters), what runs alone
(serial), which order is kept (pytest-randomly), and pytest-xdist's options beside --par."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
WITH_CACHE = FLAGS[2:]  # for runs that use recorded durations: kept in pytest's cache


def rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


SETUPS_CONFTEST = """
import os, pytest

@pytest.fixture(scope="session", params=["a", "b", "c"])
def resource(request):
    with open(os.path.join(os.path.dirname(__file__), "setups.txt"), "a") as setups:
        setups.write(f"{request.param} {os.getpid()}\\n")
    return request.param
"""


def test_a_parametrized_session_fixture_is_set_up_no_more_than_with_xdist(
    pytester: pytest.Pytester,
) -> None:
    # 60 tests in 4 modules: pytest orders them by parameter (a, then b, then c), and a
    # serial run sets the fixture up 3 times.  Handing the tests out one by one, or a
    # module at a time, set it up on every worker for every parameter, or for every
    # module and parameter (15 with --par-dist=scope; 26 with --par=2 once durations
    # were recorded and the slowest modules went first).
    pytester.makeconftest(SETUPS_CONFTEST)
    for module in range(4):
        pytester.makepyfile(
            **{
                f"test_m{module}": f"""
                import pytest, time

                @pytest.mark.parametrize("i", range(5))
                def test_it(resource, i):
                    time.sleep(0.002 * {module})
                """
            }
        )
    setups = pytester.path / "setups.txt"

    def count(*args: str) -> list[list[str]]:
        setups.unlink(missing_ok=True)
        pytester.runpytest_subprocess(*WITH_CACHE, *args).assert_outcomes(passed=60)
        return rows(setups)

    assert len(count()) == 3
    xdist = len(count("-n", "2"))
    for run in ("first", "second"):  # the second with the durations of the first
        assert len(count("--par=2")) <= xdist, run
        scope = count("--par=2", "--par-dist=scope")
        assert max(Counter(map(tuple, scope)).values()) == 1, (run, scope)  # once per worker


GROUPS = """
import os, pytest

def log(name):
    with open("ran.txt", "a") as ran:
        ran.write(f"{{name}} {{os.getpid()}}\\n")

@pytest.mark.xdist_group(name="db")
@pytest.mark.parametrize("i", range(4))
def test_db_{module}(i):
    log(f"db {module}-{{i}}")

@pytest.mark.parametrize("i", range(6))
def test_free_{module}(i):
    log(f"free {module}-{{i}}")
"""


@pytest.mark.parametrize(
    "args",
    [
        ("-p", "no:xdist", "--strict-markers"),  # the mark is known without pytest-xdist
        ("--dist", "loadgroup"),  # pytest-xdist's option, with --par
        ("--par-dist=loadgroup",),
    ],
)
def test_an_xdist_group_runs_on_one_worker_in_order(
    pytester: pytest.Pytester, args: tuple[str, ...]
) -> None:
    for module in ("one", "two", "three"):
        pytester.makepyfile(**{f"test_{module}": GROUPS.format(module=module)})
    result = pytester.runpytest_subprocess(*FLAGS, "--par=3", *args)
    result.assert_outcomes(passed=30)
    ran = rows(pytester.path / "ran.txt")
    group = [(name, pid) for kind, name, pid in ran if kind == "db"]
    assert len({pid for _, pid in group}) == 1
    assert [name for name, _ in group] == [
        f"{module}-{i}" for module in ("one", "three", "two") for i in range(4)
    ]  # collection order
    assert len({pid for _, _, pid in ran}) > 1  # the rest is spread


def test_dist_modes_without_a_par_equivalent_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--dist", "each")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dist each has no --par equivalent*"])


def test_xdist_n_on_the_command_line_beats_par_in_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npar = 2\n")
    pytester.makepyfile(
        test_one="""
        import os

        def test_one():
            assert os.environ.get("PYTEST_XDIST_WORKER")
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "-n", "2")
    result.assert_outcomes(passed=1)
    assert "par: 2 workers" not in result.stdout.str()


SERIAL = """
import os, time, pytest

def running():
    return sorted(os.listdir("running"))

def enter(name):
    os.makedirs("running", exist_ok=True)
    open(os.path.join("running", name), "w").close()

def leave(name):
    os.remove(os.path.join("running", name))

@pytest.mark.parametrize("i", range(12))
def test_other(i):
    enter(f"other-{{i}}")
    time.sleep(0.02)
    leave(f"other-{{i}}")

@pytest.mark.serial
def test_alone_{name}():
    enter("alone")
    seen = [running()]
    time.sleep(0.2)
    seen.append(running())
    leave("alone")
    assert seen == [["alone"], ["alone"]]
"""


def test_tests_marked_serial_run_alone_in_process_mode(pytester: pytest.Pytester) -> None:
    for name in ("first", "second"):
        pytester.makepyfile(**{f"test_{name}": SERIAL.format(name=name)})
    result = pytester.runpytest_subprocess(*FLAGS, "--par=3", "-p", "no:xdist", "--strict-markers")
    result.assert_outcomes(passed=26)


SHUFFLING_CONFTEST = """
import random

class Shuffler:
    # What pytest-randomly does, under its name: shuffle the collected tests with a seed.
    def pytest_collection_modifyitems(self, items):
        random.Random(1234).shuffle(items)

    def pytest_collection_finish(self, session):
        with open("order.txt", "w") as order:
            order.write("\\n".join(item.nodeid for item in session.items))

def pytest_configure(config):
    config.pluginmanager.register(Shuffler(), "randomly")
"""


def test_a_shuffled_order_is_kept_on_later_runs(pytester: pytest.Pytester) -> None:
    # Once durations are recorded, the slowest modules go first: a shuffled order
    # (pytest-randomly's) was sorted back into modules, and the shuffle was lost.
    pytester.makeconftest(SHUFFLING_CONFTEST)
    for module, count in (("few", 8), ("some", 20), ("many", 32)):
        pytester.makepyfile(
            **{
                f"test_{module}": f"""
                import os, time, pytest

                @pytest.mark.parametrize("i", range({count}))
                def test_it(i, request):
                    time.sleep(0.01)
                    with open("ran.txt", "a") as ran:
                        ran.write(f"{{request.node.nodeid}} {{os.getpid()}}\\n")
                """
            }
        )
    for run in ("first", "second"):
        (pytester.path / "ran.txt").unlink(missing_ok=True)
        pytester.runpytest_subprocess(*WITH_CACHE, "--par=2").assert_outcomes(passed=60)
        order = (pytester.path / "order.txt").read_text().split("\n")
        by_worker: dict[str, list[str]] = {}
        for nodeid, pid in rows(pytester.path / "ran.txt"):
            by_worker.setdefault(pid, []).append(nodeid)
        for ran in by_worker.values():
            assert ran == [nodeid for nodeid in order if nodeid in set(ran)], run
