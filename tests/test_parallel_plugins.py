"""Plugins written for pytest-xdist, unchanged under --par: its plugin-facing protocol
(``config.workerinput``, ``workeroutput``, ``pytest_configure_node``,
``pytest_testnodedown``, the ``worker_id`` and ``testrun_uid`` fixtures, its variables),
and real plugins run serially and with ``--par=2``, outcomes and files compared.

The first part runs in this environment, with pytest-xdist and with ``-p no:xdist``.  The
second needs popular plugins (syrupy, pytest-django, pytest-benchmark, Hypothesis),
installed apart so that they do not load into every other test's pytest: ``python3
tasks.py test`` builds ``.venv-plugins`` and names its python in
``PYTEST_MEMO_PLUGINS_PYTHON``.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
STARTS = {"fork": ("--par=2",), "spawn": ("--par=2", "--par-start=spawn")}
MODES = {**STARTS, "thread": ("--par=2", "--par-mode=thread")}


@pytest.fixture(autouse=True)
def outside_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs here are not pytest-xdist workers, even when this suite's runs are."""
    for name in ("WORKER", "WORKER_COUNT", "TESTRUNUID"):
        monkeypatch.delenv(f"PYTEST_XDIST_{name}", raising=False)


def nodes_down(pytester: pytest.Pytester) -> list[list[object]]:
    """What XDIST_CONFTEST's pytest_testnodedown saw: [node id, error, workeroutput]."""
    lines = (pytester.path / "nodes-down.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# -- pytest-xdist's protocol -------------------------------------------------------------

XDIST_CONFTEST = """
import json, os, pytest

@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    node.workerinput["from_main"] = "given to " + node.gateway.id

@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    with open("nodes-down.jsonl", "a") as down:
        output = getattr(node, "workeroutput", None)
        down.write(json.dumps([node.gateway.id, error, output], default=repr) + "\\n")

def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["finished"] = session.config.workerinput["from_main"]

def pytest_unconfigure(config):
    if hasattr(config, "workerinput"):
        open(f"unconfigured-{config.workerinput['workerid']}", "w").close()
"""

XDIST_TESTS = """
import json, os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_sees_its_worker(i, request, worker_id, testrun_uid):
    time.sleep(0.05)
    workerinput = request.config.workerinput
    seen = {
        "worker_id": worker_id,
        "testrun_uid": testrun_uid,
        "workerinput": {
            key: workerinput[key]
            for key in ("workerid", "workercount", "testrunuid", "from_main")
        },
        "variables": [
            os.environ.get(f"PYTEST_XDIST_{name}")
            for name in ("WORKER", "WORKER_COUNT", "TESTRUNUID")
        ],
    }
    with open("seen.jsonl", "a") as file:
        file.write(json.dumps(seen) + "\\n")
"""


@pytest.mark.parametrize("xdist", ["with xdist", "without xdist"])
@pytest.mark.parametrize("start", STARTS)
def test_workers_speak_xdists_protocol(pytester: pytest.Pytester, start: str, xdist: str) -> None:
    pytester.makeconftest(XDIST_CONFTEST)
    pytester.makepyfile(test_xdist=XDIST_TESTS)
    without = ("-p", "no:xdist") if xdist == "without xdist" else ()
    result = pytester.runpytest_subprocess(*FLAGS, *without, *STARTS[start], timeout=120)
    result.assert_outcomes(passed=6)
    seen = [json.loads(line) for line in (pytester.path / "seen.jsonl").read_text().splitlines()]
    uids = {entry["testrun_uid"] for entry in seen}
    assert len(uids) == 1  # one run, the same id in every worker
    for entry in seen:
        worker = entry["worker_id"]
        assert worker in ("gw0", "gw1")
        assert entry["workerinput"] == {
            "workerid": worker,
            "workercount": 2,
            "testrunuid": entry["testrun_uid"],
            "from_main": f"given to {worker}",
        }
        assert entry["variables"] == [worker, "2", entry["testrun_uid"]]
    # Each worker ran pytest_sessionfinish, sent its workeroutput, then ran unconfigure.
    down = nodes_down(pytester)
    assert sorted(node for node, _, _ in down) == ["gw0", "gw1"]
    for node, error, output in down:
        assert error is None
        assert output["finished"] == f"given to {node}"
        assert output["exitstatus"] == 0
    assert sorted(path.name for path in pytester.path.glob("unconfigured-*")) == [
        "unconfigured-gw0",
        "unconfigured-gw1",
    ]


@pytest.mark.parametrize("xdist", ["with xdist", "without xdist"])
@pytest.mark.parametrize(
    "options", [(), ("--par=2", "--par-mode=thread")], ids=["serial", "thread"]
)
def test_one_process_is_the_master(
    pytester: pytest.Pytester, options: tuple[str, ...], xdist: str
) -> None:
    """Without worker processes, as without xdist's: ``worker_id`` is "master"."""
    pytester.makepyfile(
        test_ids="""
        import os, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_master(i, request, worker_id, testrun_uid):
            assert worker_id == "master"
            assert len(testrun_uid) == 32
            assert not hasattr(request.config, "workerinput")
            assert "PYTEST_XDIST_WORKER" not in os.environ
        """
    )
    without = ("-p", "no:xdist") if xdist == "without xdist" else ()
    pytester.runpytest_subprocess(*FLAGS, *without, *options).assert_outcomes(passed=4)


def test_a_crashed_worker_goes_down_with_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(XDIST_CONFTEST)
    pytester.makepyfile(
        test_crash="""
        import os, time, pytest

        @pytest.mark.parametrize("i", range(4))
        def test_quick(i):
            time.sleep(0.05)

        def test_crash():
            os._exit(3)
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", timeout=120)
    result.assert_outcomes(passed=4, failed=1)
    down = nodes_down(pytester)
    crashed = [(node, error) for node, error, output in down if output is None]
    assert len(crashed) == 1
    assert "exited with code 3" in crashed[0][1]
    finished = [node for node, error, output in down if output is not None]
    # Each worker went down once; one that replaces the crashed worker (if tests were
    # left for it) has the next id, as in xdist.
    assert len({node for node, _, _ in down}) == len(down)
    assert set(finished) <= {"gw0", "gw1", "gw2"} - {crashed[0][0]}


# -- subtests: a test whose subtests failed fails ------------------------------------------

SUBTESTS = """
import pytest

def test_some_fail(subtests):
    for i in range(3):
        with subtests.test(i=i):
            assert i != 1

def test_one_fails(subtests):
    with subtests.test("x"):
        assert False
    with subtests.test("y"):
        pass

@pytest.mark.parametrize("i", range(4))
def test_plain(i):
    pass
"""


@pytest.mark.parametrize("options", list(MODES.values()), ids=list(MODES))
def test_subtest_failures_fail_their_test(
    pytester: pytest.Pytester, options: tuple[str, ...]
) -> None:
    if not hasattr(pytest, "Subtests"):
        pytest.skip("subtests are built into pytest from 9.0 on")
    pytester.makepyfile(test_sub=SUBTESTS)
    serial = pytester.runpytest_subprocess(*FLAGS, "--junitxml=serial.xml")
    assert serial.parseoutcomes()["failed"] == 4  # 2 subtests, and the 2 tests holding them
    parallel = pytester.runpytest_subprocess(*FLAGS, *options, "--junitxml=par.xml", timeout=120)
    assert parallel.parseoutcomes() == serial.parseoutcomes()
    parallel.stdout.fnmatch_lines(["FAILED *test_some_fail - contains 1 failed subtest"])
    for name in ("serial.xml", "par.xml"):
        assert junit_failures(pytester.path / name) == "4", name


def junit_failures(path: Path) -> str | None:
    suite = ElementTree.parse(path).getroot().find("testsuite")
    assert suite is not None
    return suite.get("failures")


@pytest.mark.parametrize("options", list(MODES.values()), ids=list(MODES))
def test_pytest_subtests_outcomes_as_in_a_serial_run(
    pytester: pytest.Pytester, pytest84: str, options: tuple[str, ...]
) -> None:
    """The pytest-subtests plugin, with pytest 8.4 (pytest 9 has subtests of its own)."""
    pytester.makepyfile(test_sub=SUBTESTS)

    def run(*args: str) -> pytest.RunResult:
        return pytester.run(pytest84, "-m", "pytest", *FLAGS, *args, timeout=120)

    serial = run("--junitxml=serial.xml")
    serial.stdout.fnmatch_lines(["platform * pytest-8.4.*", "*2 failed, 6 passed, 3 subtests*"])
    parallel = run(*options, "--junitxml=par.xml")
    assert parallel.parseoutcomes() == serial.parseoutcomes()
    assert junit_failures(pytester.path / "par.xml") == junit_failures(pytester.path / "serial.xml")


# -- real plugins, in an environment of their own ------------------------------------------

PLUGINS_VARIABLE = "PYTEST_MEMO_PLUGINS_PYTHON"


@pytest.fixture
def plugins_python() -> str:
    """The python of ``.venv-plugins`` (``python3 tasks.py test`` builds it)."""
    python = os.environ.get(PLUGINS_VARIABLE)
    if not python:
        message = (
            f"set {PLUGINS_VARIABLE} to the python of an environment with the plugins of "
            "tasks.py's ensure_plugins (python3 tasks.py test builds .venv-plugins)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    if not Path(python).exists():
        pytest.fail(f"{PLUGINS_VARIABLE}={python}: no such interpreter")
    return python


# pytest-asyncio warns (in every run's counts) while its loop scope is left unset.
PLUGIN_FLAGS = ("-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function")
NOT_SHUFFLED = ("-p", "no:randomly")  # pytest-randomly's tests alone have their order shuffled


class Runner:
    def __init__(self, pytester: pytest.Pytester, python: str) -> None:
        self.pytester = pytester
        self.python = python

    def __call__(self, *options: str, timeout_seconds: float = 300) -> pytest.RunResult:
        return self.shuffled(*NOT_SHUFFLED, *options, timeout_seconds=timeout_seconds)

    def shuffled(self, *options: str, timeout_seconds: float = 300) -> pytest.RunResult:
        """A run with pytest-randomly active, as where it is installed."""
        command = (self.python, "-m", "pytest", *PLUGIN_FLAGS, *options)
        return self.pytester.run(*command, timeout=timeout_seconds)


@pytest.fixture
def run(pytester: pytest.Pytester, plugins_python: str) -> Runner:
    return Runner(pytester, plugins_python)


def snapshot_tests(pytester: pytest.Pytester, modules: int) -> None:
    for module in range(modules):
        pytester.makepyfile(
            **{
                f"test_snap{module}": f"""
                def test_dict(snapshot):
                    assert snapshot == {{"module": {module}}}

                def test_list(snapshot):
                    assert snapshot == [{module}, "b"]
                """
            }
        )


def snapshot_files(pytester: pytest.Pytester) -> dict[str, str]:
    directory = pytester.path / "__snapshots__"
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


@pytest.mark.parametrize("start", STARTS)
def test_syrupy_writes_checks_and_deletes_as_a_serial_run(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    snapshot_tests(pytester, modules=4)
    serial = run("--snapshot-update")
    serial.stdout.fnmatch_lines(["*8 snapshots generated*"])
    expected = snapshot_files(pytester)
    for path in (pytester.path / "__snapshots__").iterdir():
        path.unlink()
    parallel = run("--snapshot-update", *STARTS[start])
    parallel.stdout.fnmatch_lines(["*8 snapshots generated*"])
    assert parallel.ret == 0
    assert snapshot_files(pytester) == expected  # no lock files left, nothing missing
    # Updating existing snapshots deletes none of them; checking them passes.
    updated = run("--snapshot-update", *STARTS[start])
    assert "deleted" not in updated.stdout.str().lower()
    assert snapshot_files(pytester) == expected
    check = run(*STARTS[start])
    check.stdout.fnmatch_lines(["*8 snapshots passed*"])
    assert check.ret == 0
    # A test removed: its snapshots, and only those, are deleted.
    (pytester.path / "test_snap3.py").unlink()
    pruned = run("--snapshot-update", *STARTS[start])
    pruned.stdout.fnmatch_lines(["*2 unused snapshots deleted*"])
    del expected["test_snap3.ambr"]
    assert snapshot_files(pytester) == expected


def test_syrupy_without_xdist_runs_serially(pytester: pytest.Pytester, run: Runner) -> None:
    """syrupy gathers its workers' reports only where pytest-xdist is installed: without
    it, the main process would think every snapshot unused, and delete them."""
    snapshot_tests(pytester, modules=2)
    run("--snapshot-update").stdout.fnmatch_lines(["*4 snapshots generated*"])
    expected = snapshot_files(pytester)
    result = run("--snapshot-update", "--par=2", "-p", "no:xdist")
    result.stdout.fnmatch_lines(["*--par: running serially, as syrupy gathers*"])
    assert snapshot_files(pytester) == expected


DJANGO_SETTINGS = """
SECRET_KEY = "for tests"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {"default": %r}
USE_TZ = True
"""

DJANGO_TEST = """
import time
import pytest
from django.contrib.auth.models import User
from django.db import connection

@pytest.mark.parametrize("i", range(3))
def test_user(db, i):
    User.objects.create(username=f"user{i}")
    time.sleep(0.05)
    assert User.objects.count() == 1
    with open("databases.txt", "a") as file:
        file.write(connection.settings_dict["NAME"] + "\\n")
"""

POSTGRES_VARIABLE = "PYTEST_MEMO_POSTGRES"  # python3 tasks.py test starts a server for it

# Lists (and with "drop", drops) the databases whose names start with argv[2].
POSTGRES_DATABASES = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    query = "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1"
    names = [row[0] for row in connection.execute(query, (sys.argv[2],))]
    for name in names if sys.argv[3:] == ["drop"] else []:
        connection.execute(f'DROP DATABASE "{name}"')
    print("\\n".join(names))
"""


class DjangoDatabase:
    """A database of the Django tests' settings: the test database pytest-django makes of
    it, and those its workers left behind."""

    def __init__(self, settings: dict[str, object], test_name: str) -> None:
        self.settings = settings
        self.test_name = test_name

    def left(self) -> list[str]:
        raise NotImplementedError


class SQLiteDatabase(DjangoDatabase):
    def __init__(self, pytester: pytest.Pytester) -> None:
        name = {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}
        super().__init__({**name, "TEST": {"NAME": "test_db.sqlite3"}}, "test_db.sqlite3")
        self.directory = pytester.path

    def left(self) -> list[str]:
        return sorted(path.name for path in self.directory.glob(f"{self.test_name}*"))


class PostgresDatabase(DjangoDatabase):
    def __init__(self, run: Runner, address: str) -> None:
        server = urllib.parse.urlsplit(address)
        name = f"memo_{uuid.uuid4().hex[:12]}"  # this test's own, on a server others share
        settings = {"ENGINE": "django.db.backends.postgresql", "NAME": name}
        settings.update(USER=server.username, HOST=server.hostname, PORT=server.port)
        super().__init__(settings, f"test_{name}")
        self.run = run
        self.address = address

    def left(self) -> list[str]:
        return self._databases()

    def drop(self) -> None:
        self._databases("drop")

    def _databases(self, *drop: str) -> list[str]:
        script = (self.run.python, "-c", POSTGRES_DATABASES, self.address, self.test_name)
        listed = self.run.pytester.run(*script, *drop, timeout=60)
        assert listed.ret == 0, listed.stderr.str()
        return [line for line in listed.stdout.lines if line]


@pytest.fixture
def django_database(request: pytest.FixtureRequest, run: Runner) -> Iterator[DjangoDatabase]:
    if request.param == "sqlite":
        yield SQLiteDatabase(run.pytester)
        return
    address = os.environ.get(POSTGRES_VARIABLE)
    if not address:
        pytest.skip(
            f"{POSTGRES_VARIABLE} names no PostgreSQL server (postgresql://user@host:port/db); "
            "python3 tasks.py test starts one where PostgreSQL is installed or it runs as root"
        )
    database = PostgresDatabase(run, address)
    yield database
    database.drop()


@pytest.mark.parametrize("reuse", [(), ("--reuse-db",)], ids=["new db", "reuse db"])
@pytest.mark.parametrize(
    ("django_database", "start"),
    # (PostgreSQL's worker databases are named by the same code in spawned workers.)
    [("sqlite", "fork"), ("sqlite", "spawn"), ("postgresql", "fork")],
    indirect=["django_database"],
)
def test_django_gives_each_worker_its_own_test_database(
    pytester: pytest.Pytester,
    run: Runner,
    django_database: DjangoDatabase,
    start: str,
    reuse: tuple[str, ...],
) -> None:
    pytester.makepyfile(settings=DJANGO_SETTINGS % (django_database.settings,))
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n")
    for module in range(2):
        pytester.makepyfile(**{f"test_users{module}": DJANGO_TEST})
    name = django_database.test_name
    serial = run(*reuse)
    serial.assert_outcomes(passed=6)
    assert set((pytester.path / "databases.txt").read_text().split()) == {name}
    (pytester.path / "databases.txt").unlink()
    for _ in range(2 if reuse else 1):  # --reuse-db: the second run finds the databases
        parallel = run(*reuse, *STARTS[start])
        parallel.assert_outcomes(passed=6)
    used = set((pytester.path / "databases.txt").read_text().split())
    workers = [f"{name}_gw0", f"{name}_gw1"]
    assert used == set(workers)
    assert django_database.left() == ([name, *workers] if reuse else [])


BENCHMARK = """
def test_sum(benchmark):
    assert benchmark(sum, range(100)) == 4950

def test_plain():
    pass
"""
DISABLED = "*Benchmarks are automatically disabled because xdist plugin is active*"


@pytest.mark.parametrize("options", list(MODES.values()), ids=list(MODES))
def test_benchmark_disables_itself_and_says_so(
    pytester: pytest.Pytester, run: Runner, options: tuple[str, ...]
) -> None:
    pytester.makepyfile(test_bench=BENCHMARK)
    serial = run()
    serial.assert_outcomes(passed=2)
    serial.stdout.fnmatch_lines(["*benchmark: 1 tests*"])
    parallel = run(*options)
    parallel.assert_outcomes(passed=2)
    assert "benchmark: 1 tests" not in parallel.stdout.str()  # not timed
    output = parallel.stdout.str() + parallel.stderr.str()
    assert len(re.findall("Benchmarks are automatically disabled", output)) == 1, output


def test_benchmark_only_is_refused(pytester: pytest.Pytester, run: Runner) -> None:
    pytester.makepyfile(test_bench=BENCHMARK)
    result = run("--benchmark-only", "--par=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--benchmark-only: benchmarks cannot run with --par*"])


HYPOTHESIS = """
from hypothesis import given, settings, strategies as st

@settings(max_examples=10)
@given(st.integers())
def test_integers(x):
    assert isinstance(x, int)

@settings(max_examples=10)
@given(st.text())
def test_text(s):
    assert isinstance(s, str)
"""


@pytest.mark.parametrize("start", STARTS)
def test_hypothesis_statistics_reach_the_summary(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    pytester.makepyfile(test_props=HYPOTHESIS)
    result = run("--hypothesis-show-statistics", *STARTS[start])
    result.assert_outcomes(passed=2)
    output = result.stdout.str()
    section = output[output.index("Hypothesis Statistics") :]
    for test in ("test_integers", "test_text"):
        assert f"test_props.py::{test}:" in section
    assert section.count("10 passing") == 2


def test_xdist_style_conftest_with_the_plugins(pytester: pytest.Pytester, run: Runner) -> None:
    """The protocol test's conftest, among the real plugins (and their xdist hooks)."""
    pytester.makeconftest(XDIST_CONFTEST)
    pytester.makepyfile(test_xdist=XDIST_TESTS)
    run("--par=2").assert_outcomes(passed=6)
    down = (pytester.path / "nodes-down.jsonl").read_text().split("\n")
    assert len([line for line in down if line]) == 2


# A test that fails, or crashes its worker, the first time(s) it runs: each attempt leaves a
# file, so the rerun (in whichever worker) knows it is one.
FIRST_ATTEMPTS = """
import os

def first_attempts(name, count=1):
    attempts = len([path for path in os.listdir() if path.startswith(f"attempt-{name}-")])
    open(f"attempt-{name}-{attempts}", "w").close()
    return attempts < count
"""

FLAKY = f"""
import pytest
{FIRST_ATTEMPTS}

def test_flaky():
    assert not first_attempts("flaky")

@pytest.mark.flaky(reruns=3)
def test_flaky_twice():
    assert not first_attempts("twice", count=2)

@pytest.mark.parametrize("i", range(4))
def test_plain(i):
    pass
"""

CRASHES = f"""
import os, signal
{FIRST_ATTEMPTS}

def test_exits_once():
    if first_attempts("exits"):
        os._exit(3)

def test_kills_itself_once():
    if first_attempts("killed"):
        os.kill(os.getpid(), signal.SIGKILL)

def test_always_crashes():
    os._exit(4)
"""


def rerun_summary(result: pytest.RunResult) -> list[str]:
    """pytest-rerunfailures' summary (``-rR``): each attempt of each rerun test, in order."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "rerun test summary info" in line)
    words = ("RERUN", "PASSED", "FAILED")
    return [line for line in lines[start + 1 :] if line.split(" ")[0] in words]


def forget_attempts(pytester: pytest.Pytester) -> None:
    for path in pytester.path.glob("attempt-*"):
        path.unlink()


@pytest.mark.parametrize("start", STARTS)
def test_rerunfailures_reruns_flaky_tests_as_a_serial_run(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    pytester.makepyfile(test_flaky=FLAKY)
    serial = run("--reruns=1", "-rR")
    assert serial.parseoutcomes() == {"passed": 6, "rerun": 3}
    forget_attempts(pytester)
    parallel = run("--reruns=1", "-rR", *STARTS[start])
    assert parallel.parseoutcomes() == serial.parseoutcomes()
    assert rerun_summary(parallel) == rerun_summary(serial)


@pytest.mark.parametrize("start", STARTS)
def test_rerunfailures_reruns_tests_that_crash_their_worker(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    """As under xdist: the main process counts each test's crashes (pytest_handlecrashitem)
    and the reruns that workers report to it.  Spawned workers did not report to it:
    before, their crashed tests were not rerun."""
    pytester.makepyfile(test_crashes=CRASHES)
    # (syrupy warns, in the counts, that a crashed worker sent it no snapshot report)
    result = run("--reruns=1", "-rR", "-p", "no:syrupy", *STARTS[start])
    assert result.parseoutcomes() == {"passed": 2, "failed": 1, "rerun": 3}
    for test, words in [
        ("test_exits_once", ["RERUN", "PASSED"]),
        ("test_kills_itself_once", ["RERUN", "PASSED"]),
        ("test_always_crashes", ["RERUN", "FAILED"]),
    ]:
        attempts = [line.split(" ")[0] for line in rerun_summary(result) if test in line]
        assert attempts == words, test
    result.stdout.fnmatch_lines(["*test_always_crashes crashed: *exited with code 4*"])
    # Without --reruns, a crash fails its test.
    forget_attempts(pytester)
    once = run(*STARTS[start], "-p", "no:syrupy", "-k", "exits_once")
    assert once.parseoutcomes() == {"failed": 1, "deselected": 2}


# -- report files: pytest-reportlog, pytest-html ---------------------------------------------

REPORTED = """
import sys, warnings, pytest, pytest_html

@pytest.mark.parametrize("i", range(3))
def test_pass(i, record_property):
    record_property("i", i)
    print("printed", i)

def test_fail():
    print("before failing")
    sys.stderr.write("to stderr\\n")
    assert 1 == 2

@pytest.mark.skip(reason="not today")
def test_skip():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_warns():
    warnings.warn(UserWarning("careful"))

@pytest.fixture
def broken():
    raise RuntimeError("setup broke")

def test_error(broken):
    pass

def test_extras(extras):
    extras.append(pytest_html.extras.url("https://example.invalid/", name="link"))
"""

# What differs from run to run, or from worker to worker (xdist's fields, which --par's
# reports do not carry, are ignored too).
TIMING_AND_WORKER_FIELDS = {"duration", "start", "stop", "worker_id", "item_index", "node"}


def reportlog_records(path: Path) -> list[dict[str, object]]:
    """pytest-reportlog's records, without timings, in an order of their own (a parallel
    run reports tests in the order they finish)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    kept = [{k: v for k, v in r.items() if k not in TIMING_AND_WORKER_FIELDS} for r in records]
    return sorted(kept, key=lambda record: json.dumps(record, sort_keys=True))


def html_results(path: Path) -> dict[str, object]:
    """pytest-html's report: each test's results (outcome, log, extras), the counts, and
    the environment (pytest-metadata's) it shows."""
    text = path.read_text()
    data = json.loads(html.unescape(re.search('data-jsonblob="([^"]*)"', text).group(1)))
    tests = {
        test: sorted((row["result"], row["log"], json.dumps(row["extras"])) for row in rows)
        for test, rows in data["tests"].items()
    }
    counts = re.findall(r"(\d+) (Failed|Passed|Skipped|Expected failures|Errors|Reruns)", text)
    return {"tests": tests, "counts": sorted(counts), "environment": data["environment"]}


@pytest.mark.parametrize("mode", MODES)
def test_reportlog_and_html_files_hold_what_a_serial_run_writes(
    pytester: pytest.Pytester, run: Runner, mode: str
) -> None:
    """Before, workers wrote to these files too: a forked worker's end of session added a
    record to the log (a compressed log was left unreadable), a spawned worker emptied the
    log as it started, and pytest-html's metadata failed the run (an INTERNALERROR)."""
    pytester.makepyfile(test_reported=REPORTED)
    files = {}
    for name, options in {"serial": (), "parallel": MODES[mode]}.items():
        for log in ("log.jsonl", "log.jsonl.gz"):
            (pytester.path / log).unlink(missing_ok=True)
        result = run(*options, "--report-log=log.jsonl", f"--html={name}.html")
        assert result.parseoutcomes() == {
            "passed": 5,
            "failed": 1,
            "skipped": 1,
            "xfailed": 1,
            "warnings": 1,
            "errors": 1,
        }, name
        gzipped = run(*options, "--report-log=log.jsonl.gz", "-k", "pass or warns")
        gzipped.assert_outcomes(passed=4, deselected=5, warnings=1)
        with gzip.open(pytester.path / "log.jsonl.gz", "rt") as compressed:
            (pytester.path / "unzipped.jsonl").write_text(compressed.read())
        files[name] = (
            reportlog_records(pytester.path / "log.jsonl"),
            reportlog_records(pytester.path / "unzipped.jsonl"),
            html_results(pytester.path / f"{name}.html"),
        )
    assert files["parallel"] == files["serial"]


# -- pytest-cov ------------------------------------------------------------------------------

# Each test takes some branches of one function: the totals match only if what every worker
# ran is counted, once.
COVERED = {
    "shapes": """
    SIDES = {"square": 4, "triangle": 3}  # run at import, during collection

    def perimeter(shape, side):
        if side <= 0:
            return 0
        if shape not in SIDES:
            raise ValueError(shape)
        return SIDES[shape] * side

    def never_called():
        return "missed"
    """,
    "test_shapes": """
    import pytest, shapes

    @pytest.mark.parametrize("side", range(-1, 3))
    def test_square(side):
        assert shapes.perimeter("square", side) == max(4 * side, 0)

    @pytest.mark.parametrize("shape", ["circle", "line"])
    def test_unknown(shape):
        with pytest.raises(ValueError):
            shapes.perimeter(shape, 1)
    """,
}


def coverage_measured(path: Path) -> dict[str, object]:
    """coverage.py's JSON report: the totals, and each file's lines and branches."""
    report = json.loads(path.read_text())
    kinds = ("executed_lines", "missing_lines", "executed_branches", "missing_branches")
    files = {
        name: {kind: measured[kind] for kind in kinds} for name, measured in report["files"].items()
    }
    return {"totals": report["totals"], "files": files}


@pytest.mark.parametrize("mode", MODES)
def test_cov_measures_what_a_serial_run_measures(
    pytester: pytest.Pytester, run: Runner, mode: str
) -> None:
    pytester.makepyfile(**COVERED)
    cov = ("--cov=shapes", "--cov-branch", "--cov-report=term-missing")
    serial = run(*cov, "--cov-report=json:serial.json")
    serial.assert_outcomes(passed=6)
    parallel = run(*cov, "--cov-report=json:parallel.json", *MODES[mode])
    parallel.assert_outcomes(passed=6)
    measured = coverage_measured(pytester.path / "serial.json")
    assert measured["totals"]["missing_lines"] == 1, measured  # never_called's body
    assert coverage_measured(pytester.path / "parallel.json") == measured
    for result in (serial, parallel):
        result.stdout.re_match_lines([r"shapes.py +9 +1 +4 +0 +92% +11$"])
    assert sorted(path.name for path in pytester.path.glob(".coverage*")) == [".coverage"]


# -- pytest-randomly, pytest-timeout, pytest-asyncio, pytest-mock in worker processes ------

RANDOM_VALUES = """
import json, os, random, pytest

@pytest.mark.parametrize("i", range(8))
def test_draws(i):
    with open(f"drawn-{os.environ.get('PYTEST_XDIST_WORKER', 'serial')}.jsonl", "a") as out:
        out.write(json.dumps([f"test_draws[{i}]", random.random()]) + "\\n")
"""


def random_draws(pytester: pytest.Pytester) -> tuple[dict[str, float], list[list[str]]]:
    """Each test's random number, and the order each process ran its tests in."""
    values, orders = {}, []
    for path in sorted(pytester.path.glob("drawn-*.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        values.update(dict(lines))
        orders.append([test for test, _ in lines])
        path.unlink()
    return values, orders


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    remaining = iter(whole)
    return all(test in remaining for test in part)


@pytest.mark.parametrize("start", STARTS)
def test_randomly_seeds_and_orders_tests_as_a_serial_run_of_its_seed(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    # Before, a spawned worker drew a seed of its own, shuffled its collection differently
    # and was refused ("collected other tests than the main process").
    pytester.makepyfile(test_random=RANDOM_VALUES)
    parallel = run.shuffled(*STARTS[start])  # no seed given: the main process draws one
    parallel.assert_outcomes(passed=8)
    seed = re.search(r"Using --randomly-seed=(\d+)", parallel.stdout.str())
    assert seed is not None, parallel.stdout.str()
    drawn, orders = random_draws(pytester)
    assert len(orders) == 2  # both workers ran tests
    run.shuffled(f"--randomly-seed={seed[1]}").assert_outcomes(passed=8)
    expected, [serial_order] = random_draws(pytester)
    assert serial_order != sorted(serial_order, key=lambda test: int(test[11:-1]))  # shuffled
    assert drawn == expected
    assert all(is_subsequence(order, serial_order) for order in orders), (orders, serial_order)


def test_randomly_loaded_by_module_name_seeds_spawned_workers(
    pytester: pytest.Pytester, run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the seed was passed only when the plugin was registered as "randomly" (its
    # entry point's name); loaded with -p pytest_randomly, the run was refused.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_random=RANDOM_VALUES)
    by_name = ("-p", "pytest_memo.memoize.plugin", "-p", "pytest_memo.parallel.plugin")
    parallel = run.shuffled(*by_name, "-p", "pytest_randomly", *STARTS["spawn"])
    parallel.assert_outcomes(passed=8)
    seed = re.search(r"Using --randomly-seed=(\d+)", parallel.stdout.str())
    assert seed is not None, parallel.stdout.str()
    drawn, _ = random_draws(pytester)
    run.shuffled(*by_name, "-p", "pytest_randomly", f"--randomly-seed={seed[1]}")
    assert random_draws(pytester)[0] == drawn


HANGS = """
import time, pytest

@pytest.mark.timeout(1)
def test_hangs():
    time.sleep(60)

def test_unlimited_with_the_option_unset():
    time.sleep(0.1)

@pytest.mark.parametrize("i", range(3))
def test_quick(i):
    pass
"""


def outcome_lines(result: pytest.RunResult) -> list[str]:
    """The short summary's lines (-rA), sorted: the outcome of every test."""
    return sorted(line for line in result.outlines if re.match(r"(PASSED|FAILED|ERROR) ", line))


def parallel_run_as_serial(run: Runner, start: str, passed: int, failed: int) -> pytest.RunResult:
    """A --par=2 run whose tests end as in a serial run, where ``passed`` and ``failed``."""
    serial = run("-rA")
    serial.assert_outcomes(passed=passed, failed=failed)
    parallel = run("-rA", *STARTS[start], timeout_seconds=60)
    parallel.assert_outcomes(passed=passed, failed=failed)
    assert outcome_lines(parallel) == outcome_lines(serial)
    return parallel


@pytest.mark.parametrize("start", STARTS)
def test_timeout_fails_tests_that_hang_as_a_serial_run(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    pytester.makepyfile(test_hangs=HANGS)
    parallel = parallel_run_as_serial(run, start, passed=4, failed=1)
    # pytest-timeout's own report of where the test hung, from inside the worker.
    parallel.stdout.fnmatch_lines(["*time.sleep(60)", "*Timeout (>1.0s) from pytest-timeout*"])
    # --timeout sets every test's limit, as serially.
    assert run("--timeout=0.05", *STARTS[start]).parseoutcomes()["failed"] == 2


ASYNC_TESTS = """
import asyncio, os, pytest, pytest_asyncio

in_the_session_loop = pytest.mark.asyncio(loop_scope="session")

@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def connection():
    await asyncio.sleep(0)
    return {"opened in": os.getpid(), "loop": id(asyncio.get_running_loop())}

@in_the_session_loop
@pytest.mark.parametrize("i", range(6))
async def test_uses_the_session_loop(i, connection):
    await asyncio.sleep(0.01)
    assert connection["opened in"] == os.getpid()
    assert connection["loop"] == id(asyncio.get_running_loop())

@in_the_session_loop
async def test_fails():
    await asyncio.sleep(0)
    assert False

def test_sync():
    pass
"""


@pytest.mark.parametrize("start", STARTS)
def test_asyncio_session_loops_run_as_in_a_serial_run(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    pytester.makepyfile(test_async=ASYNC_TESTS)
    parallel_run_as_serial(run, start, passed=7, failed=1)


MOCKED = """
import os, pytest

@pytest.mark.parametrize("i", range(4))
def test_patches(i, mocker):
    spy = mocker.patch("os.getcwd", return_value=f"patched {i}")
    assert os.getcwd() == f"patched {i}"
    spy.assert_called_once_with()

@pytest.mark.parametrize("i", range(4))
def test_not_patched(i):
    assert not os.getcwd().startswith("patched")

def test_spy_fails(mocker):
    spy = mocker.spy(os.path, "join")
    os.path.join("a", "b")
    spy.assert_called_once_with("a", "c")
"""


@pytest.mark.parametrize("start", STARTS)
def test_mocker_patches_undone_after_each_test_as_in_a_serial_run(
    pytester: pytest.Pytester, run: Runner, start: str
) -> None:
    pytester.makepyfile(test_mocked=MOCKED)
    parallel = parallel_run_as_serial(run, start, passed=8, failed=1)
    parallel.stdout.fnmatch_lines(["*AssertionError: expected call not found.*"])
