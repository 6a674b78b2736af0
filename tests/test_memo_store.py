"""The store under stress: damaged entries, unusable stores, values and fixtures it cannot
take, eviction, the summary line, and several processes needing the same entry at once
(pytest-xdist workers, pytest runs side by side, a computing process that gets killed).
Also: the core behaviour under pytest 8.4, the oldest pytest we support.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash
from memo_suite import SPEED_FLAGS, MemoSuite

from pytest_memo.memoize.stats import format_size

TEST_SEEN = """
from memo_log import record


def test_data(data):
    record(data, "seen.txt")
"""

DATA = """
@pytest.fixture
@pytest.mark.memo
def data():
    record("data")
    return {"answer": 42, "blob": bytes(range(256)) * 8}
"""

# -- damaged entries ---------------------------------------------------------------


def flip(offset: Callable[[int], int]) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        at = offset(len(data))
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]

    return damage


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated to half": lambda data: data[: len(data) // 2],
    "truncated inside the header": lambda data: data[:20],
    "truncated by one byte": lambda data: data[:-1],
    "empty": lambda data: b"",
    "garbage": lambda data: b"not a pytest-memo entry at all" * 10,
    "flipped byte in the header": flip(lambda size: 9),
    "flipped byte in the value": flip(lambda size: 64 + 100),
    "flipped byte in the middle": flip(lambda size: size // 2),
    "flipped last byte": flip(lambda size: size - 1),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_warns_is_recomputed_and_then_hits(
    suite: MemoSuite, damage: Callable[[bytes], bytes]
) -> None:
    suite.write("conftest.py", DATA)
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    (entry,) = suite.entries()
    entry.write_bytes(damage(entry.read_bytes()))

    result = suite.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*MemoWarning: pytest-memo: removed a damaged entry of fixture 'data' and recomputed*"]
    )
    assert suite.calls() == ["data", "data"]
    assert len(set(suite.seen())) == 1  # the same, correct value both times

    result = suite.run()
    result.assert_outcomes(passed=1, warnings=0)
    assert suite.calls() == ["data", "data"]
    assert len(suite.seen()) == 3
    assert len(set(suite.seen())) == 1


def test_an_entry_of_a_newer_format_is_recomputed(suite: MemoSuite) -> None:
    # An intact header claiming format version 99: refused with advice, recomputed.
    suite.write("conftest.py", DATA)
    suite.write("test_it.py", TEST_SEEN)
    suite.run().assert_outcomes(passed=1)
    (entry,) = suite.entries()
    data = bytearray(entry.read_bytes())
    data[8:12] = (99).to_bytes(4, "little")  # after the 8 magic bytes
    data[40:48] = xxhash.xxh3_64_intdigest(bytes(data[:40])).to_bytes(8, "little")
    entry.write_bytes(bytes(data))
    result = suite.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*format version 99 by a newer pytest-memo*upgrade pytest-memo*"])
    assert suite.calls() == ["data", "data"]


def test_a_damaged_memory_mapped_array_is_not_served(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import numpy as np


        @pytest.fixture
        @pytest.mark.memo(mmap=True)
        def data():
            record("data")
            return np.zeros(100_000)
        """,
    )
    suite.write(
        "test_it.py",
        """
        def test_data(data):
            assert not data.any()
        """,
    )
    suite.run().assert_outcomes(passed=1)
    (entry,) = suite.entries()
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the 800 kB array section
    entry.write_bytes(bytes(raw))
    suite.run().assert_outcomes(passed=1)  # served the damaged array: the test fails


# -- unusable stores and values --------------------------------------------------------


def test_an_unwritable_store_warns_and_tests_pass(suite: MemoSuite) -> None:
    # Tests run as root, where permissions do not stop writes: a store below a regular
    # file can never be created, whoever runs the tests.  docs/memo.md promises one
    # warning per run, not one per fixture or per failed read, lock and write.
    suite.write("somefile", "a file, not a directory")
    suite.write(
        "conftest.py",
        DATA
        + """

@pytest.fixture(params=[1, 2])
@pytest.mark.memo
def other(request):
    record(f"other{request.param}")
    return request.param
""",
    )
    suite.write(
        "test_it.py",
        """
        from memo_log import record


        def test_data(data, other):
            assert data["answer"] == 42
            record(other, "seen.txt")
        """,
    )
    for run in (1, 2):
        result = suite.run("--memo-dir=somefile/store")
        result.assert_outcomes(passed=2, warnings=1)
        result.stdout.fnmatch_lines(["*pytest-memo: cannot *somefile/store*"])
        assert len(suite.calls()) == 4 * run  # computed every time: data once per test
    assert sorted(suite.seen()) == ["1", "1", "2", "2"]
    assert (suite.path / "somefile").read_text() == "a file, not a directory"


def test_an_unwritable_store_warns_once_with_xdist(suite: MemoSuite) -> None:
    # The main process finds the store unusable; its workers do not warn again.
    suite.write("somefile", "")
    suite.write("conftest.py", DATA)
    suite.write("test_it.py", "".join(f"def test_{n}(data):\n    pass\n" for n in range(4)))
    result = suite.run_subprocess("-n", "2", "--memo-dir=somefile/store")
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(["*pytest-memo: cannot use the store in *somefile/store*"])
    assert len(suite.calls()) == 4


UNSERIALIZABLE = {
    "lock": ("import threading", "threading.Lock()", "lock"),
    "generator": ("", "(n for n in range(3))", "generator"),
    "list holding a lock": ("import threading", "[1, threading.Lock()]", "list"),
    "open file": ("", "open('conftest.py')", "TextIOWrapper"),
}


@pytest.mark.parametrize("value", UNSERIALIZABLE.values(), ids=UNSERIALIZABLE.keys())
def test_an_unserializable_value_warns_naming_the_fixture(
    suite: MemoSuite, value: tuple[str, str, str]
) -> None:
    imports, expression, type_name = value
    suite.write(
        "conftest.py",
        f"""
        {imports}


        @pytest.fixture
        @pytest.mark.memo
        def live():
            record("live")
            return {expression}
        """,
    )
    suite.write(
        "test_it.py",
        """
        from memo_log import record


        def test_live(live):
            record(type(live).__name__, "seen.txt")
        """,
    )
    for _ in range(2):
        result = suite.run()
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(
            ["*MemoWarning: pytest-memo: the value of fixture 'live' could not be stored*"]
        )
    assert suite.calls() == ["live", "live"]
    assert suite.seen() == [type_name, type_name]  # the test got the computed value
    assert suite.entries() == []
    assert not list((suite.path / ".pytest_memo").rglob("*.tmp"))


# -- fixtures that cannot be memoized -----------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "kind"),
    [
        ("def data():\n    yield 1", "is a yield fixture, and its teardown cannot be replayed"),
        ("async def data():\n    return 1", "is an async fixture, whose value only exists"),
        ("async def data():\n    yield 1", "is an async fixture, whose value only exists"),
    ],
    ids=["yield", "async", "async yield"],
)
def test_yield_and_async_fixtures_are_refused_with_advice(
    suite: MemoSuite, definition: str, kind: str
) -> None:
    suite.write("conftest.py", "@pytest.fixture\n@pytest.mark.memo\n" + definition + "\n")
    suite.write("test_it.py", "def test_data(data):\n    pass\n")
    result = suite.run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"*pytest-memo: fixture 'data' {kind}*"
            "Move the expensive part into its own (plain, synchronous) fixture*"
        ]
    )
    assert not (suite.path / "calls.txt").exists()


def test_each_test_using_a_refused_fixture_gets_one_short_error(suite: MemoSuite) -> None:
    # The first test got the refusal; every later one an AssertionError from inside pytest
    # ("assert not self._finalizers"), about 100 lines of pytest's internals each.
    suite.write(
        "conftest.py",
        """
        @pytest.fixture
        @pytest.mark.memo
        def yielding():
            yield 1


        @pytest.fixture(scope="module")
        @pytest.mark.memo
        async def asynchronous():
            return 1


        @pytest.fixture
        @pytest.mark.memo
        def temporary(tmp_path):
            return 1


        @pytest.fixture
        @pytest.mark.memo
        def dynamic(request):
            return request.getfixturevalue("yielding")
        """,
    )
    suite.write(
        "test_it.py",
        "".join(
            f"def test_{name}_{n}({name}):\n    pass\n\n\n"
            for name in ("yielding", "asynchronous", "temporary", "dynamic")
            for n in range(3)
        ),
    )
    result = suite.run("-W", "ignore::pytest_memo.MemoWarning")
    result.assert_outcomes(errors=12)
    output = result.stdout.str()
    assert "_pytest" not in output and "pytest_memo/" not in output
    assert "Traceback" not in output and "AssertionError" not in output
    fixes = {
        "yielding": "is a yield fixture*Move the expensive part into its own*",
        "asynchronous": "is an async fixture*Move the expensive part into its own*",
        "temporary": "depends on 'tmp_path'*add ignore=?'tmp_path'? to its memo*",  # ?: [ ]
        "dynamic": "is a yield fixture*Move the expensive part into its own*",
    }
    for name, fix in fixes.items():
        wanted = "yielding" if name == "dynamic" else name
        for n in range(3):
            result.stdout.fnmatch_lines(
                [f"*ERROR at setup of test_{name}_{n}*", f"pytest-memo: fixture '{wanted}' {fix}"]
            )
    assert suite.calls() == []


@pytest.mark.parametrize("argument", ["tmp_path", "monkeypatch"])
def test_a_per_run_dependency_is_an_error_suggesting_ignore(
    suite: MemoSuite, argument: str
) -> None:
    suite.write(
        "conftest.py",
        f"""
        @pytest.fixture
        @pytest.mark.memo
        def data({argument}):
            record("data")
            return 1
        """,
    )
    suite.write("test_it.py", "def test_data(data):\n    pass\n")
    result = suite.run()
    result.assert_outcomes(errors=1)
    assert (
        f"pytest-memo: fixture 'data' depends on '{argument}', which is different on every "
        f"run, so it could never be loaded from the store: add ignore=['{argument}'] to its "
        "memo mark"
    ) in result.stdout.str()
    assert suite.calls() == []


def test_an_unhashable_dependency_is_an_error_suggesting_ignore(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import threading


        @pytest.fixture
        def connection():
            return threading.Lock()


        @pytest.fixture
        @pytest.mark.memo
        def data(connection):
            record("data")
            return 1
        """,
    )
    suite.write("test_it.py", "def test_data(data):\n    pass\n")
    result = suite.run()
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert "pytest-memo: fixture 'data' depends on 'connection', whose value cannot be" in output
    assert "add ignore=['connection'] to its memo mark" in output
    # Only our message: not a chained traceback of the hashing error behind it.
    assert "During handling of the above exception" not in output
    assert suite.calls() == []


def test_an_unhashable_param_is_an_error_naming_the_fixture(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import threading


        @pytest.fixture(params=[threading.Lock()], ids=["lock"])
        @pytest.mark.memo
        def data(request):
            record("data")
            return 1
        """,
    )
    suite.write("test_it.py", "def test_data(data):\n    pass\n")
    result = suite.run()
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    assert "pytest-memo: the parameter of fixture 'data' cannot be hashed" in output
    assert "During handling of the above exception" not in output
    assert suite.calls() == []


def test_mmap_returns_a_read_only_memmap_on_a_hit(suite: MemoSuite) -> None:
    suite.write(
        "conftest.py",
        """
        import numpy as np


        @pytest.fixture(scope="session")
        @pytest.mark.memo(mmap=True)
        def data():
            record("data")
            return {"big": np.arange(100_000, dtype=np.float64), "small": np.arange(3)}
        """,
    )
    suite.write(
        "test_it.py",
        """
        import numpy as np
        from memo_log import record


        def test_data(data):
            big = data["big"]
            assert np.array_equal(big, np.arange(100_000, dtype=np.float64))
            assert data["small"].tolist() == [0, 1, 2]
            record(f"{type(big).__name__} {big.flags.writeable}", "seen.txt")
        """,
    )
    for _ in range(2):
        suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data"]
    assert suite.seen() == ["ndarray True", "memmap False"]


# -- eviction -------------------------------------------------------------------------

THREE_BLOBS = """
@pytest.fixture(scope="session")
@pytest.mark.memo
def a():
    record("a")
    return bytes(range(256)) * 400  # 100 kB


@pytest.fixture(scope="session")
@pytest.mark.memo
def b():
    record("b")
    return bytes(range(256)) * 401


@pytest.fixture(scope="session")
@pytest.mark.memo
def c():
    record("c")
    return bytes(range(256)) * 402
"""

TEST_BLOBS = """
def test_a(a):
    assert len(a) == 102400


def test_b(b):
    assert len(b) == 102656


def test_c(c):
    assert len(c) == 102912
"""


def store_bytes(suite: MemoSuite) -> int:
    return sum(path.stat().st_size for path in suite.entries())


def test_max_size_evicts_the_least_recently_used_after_the_run(suite: MemoSuite) -> None:
    suite.write("conftest.py", THREE_BLOBS)
    suite.write("test_it.py", TEST_BLOBS)
    suite.run().assert_outcomes(passed=3)
    assert len(suite.entries()) == 3  # no limit, no eviction
    # Using a makes b the least recently used entry; the limit leaves room for two.
    suite.run("-k", "test_a", "--memo-max-size=250KB").assert_outcomes(passed=1, deselected=2)
    assert suite.calls() == ["a", "b", "c"]
    assert len(suite.entries()) == 2
    assert store_bytes(suite) <= 250_000
    suite.run().assert_outcomes(passed=3)
    assert suite.calls() == ["a", "b", "c", "b"]  # b was evicted, a and c were kept


def test_max_size_from_the_ini_file(suite: MemoSuite) -> None:
    suite.pytester.makeini("[pytest]\nmemo_max_size = 250KB\n")
    suite.write("conftest.py", THREE_BLOBS)
    suite.write("test_it.py", TEST_BLOBS)
    suite.run().assert_outcomes(passed=3)
    assert len(suite.entries()) == 2
    assert store_bytes(suite) <= 250_000
    suite.run().assert_outcomes(passed=3)
    assert suite.calls() == ["a", "b", "c", "a"]  # a, written first, was evicted


# -- the summary --------------------------------------------------------------------------

SLOW_PAIR = """
import time


@pytest.fixture(scope="session")
@pytest.mark.memo
def slow():
    record("slow")
    time.sleep(0.3)
    return 1


@pytest.fixture(params=[1, 2])
@pytest.mark.memo
def quick(request, slow):
    record("quick")
    return request.param + slow
"""

TEST_PAIR = """
def test_pair(slow, quick):
    assert quick in (2, 3)
"""

SUMMARY = re.compile(
    r"^memo: (\d+) hits? \((\d+\.\d) s saved\), (\d+) miss(?:es)? \((\d+\.\d) s computed\), "
    r"(\d+) invalidated, store (\S+ [KMGT]?B) in (\S+)$",
    re.MULTILINE,
)


def summary(result: pytest.RunResult) -> tuple[int, float, int, float, int, str, str]:
    found = SUMMARY.findall(result.stdout.str())
    assert len(found) == 1, result.stdout.str()
    hits, saved, misses, computed, invalidated, size, where = found[0]
    return int(hits), float(saved), int(misses), float(computed), int(invalidated), size, where


def test_summary_of_a_cold_and_a_warm_run(suite: MemoSuite) -> None:
    suite.write("conftest.py", SLOW_PAIR)
    suite.write("test_it.py", TEST_PAIR)
    cold = summary(suite.run())
    assert suite.calls() == ["slow", "quick", "quick"]
    hits, saved, misses, computed, invalidated, size, where = cold
    assert (hits, saved, misses, invalidated, where) == (0, 0.0, 3, 0, ".pytest_memo")
    assert computed >= 0.3
    assert size == format_size(store_bytes(suite))

    warm = summary(suite.run())
    assert len(suite.calls()) == 3
    hits, saved, misses, computed, invalidated, size, where = warm
    assert (hits, misses, computed, invalidated, where) == (3, 0, 0.0, 0, ".pytest_memo")
    assert saved >= 0.3
    assert size == cold[5]


def test_summary_counts_invalidated_entries(suite: MemoSuite) -> None:
    suite.write("conftest.py", SLOW_PAIR)
    suite.write("test_it.py", TEST_PAIR)
    suite.run().assert_outcomes(passed=2)
    suite.replace("conftest.py", "return request.param + slow", "return slow + request.param")
    hits, _, misses, _, invalidated, _, _ = summary(suite.run())
    assert (hits, misses, invalidated) == (1, 2, 2)
    assert suite.calls() == ["slow", "quick", "quick", "quick", "quick"]


def test_summary_table_with_verbose(suite: MemoSuite) -> None:
    suite.write("conftest.py", SLOW_PAIR)
    suite.write("test_it.py", TEST_PAIR)
    suite.run().assert_outcomes(passed=2)
    result = suite.run("-v")
    result.stdout.fnmatch_lines(
        [
            "memo: 3 hits *",
            "  fixture  hits  misses  invalidated * saved  computed",
            "  quick       2       0            0  *",
            "  slow        1       0            0  *",
        ]
    )


def test_no_summary_without_memoized_fixtures(suite: MemoSuite) -> None:
    suite.write("test_it.py", "def test_it():\n    pass\n")
    result = suite.run()
    result.assert_outcomes(passed=1)
    assert "memo:" not in result.stdout.str()


# -- several processes ------------------------------------------------------------------

SHARED = """
import os
import time


@pytest.fixture(scope="session")
@pytest.mark.memo
def shared():
    record("shared")
    time.sleep(1)
    return "shared value"
"""

TESTS_ON_WORKERS = "".join(
    f"""
def test_{n}(shared):
    assert shared == "shared value"
    record(os.environ.get("PYTEST_XDIST_WORKER", "main"), "seen.txt")
"""
    for n in range(8)
)


def test_xdist_workers_compute_a_missing_entry_once(suite: MemoSuite) -> None:
    suite.write("conftest.py", SHARED)
    suite.write("test_it.py", "import os\nfrom memo_log import record\n" + TESTS_ON_WORKERS)
    result = suite.run_subprocess("-n", "2")
    result.assert_outcomes(passed=8)
    assert set(suite.seen()) == {"gw0", "gw1"}  # both workers needed the fixture
    assert suite.calls() == ["shared"]
    # The summary adds up the workers' counts: one computed, the other waited and loaded.
    hits, _, misses, computed, _, _, _ = summary(result)
    assert (hits, misses) == (1, 1)
    assert computed >= 1.0

    result = suite.run_subprocess("-n", "2")
    result.assert_outcomes(passed=8)
    assert suite.calls() == ["shared"]
    hits, saved, misses, _, _, _, _ = summary(result)
    assert (hits, misses) == (2, 0)  # each worker loaded it...
    assert 1.0 <= saved < 2.0  # ...and the computation it saved counts once

    # --memo-refresh recomputes once per run, not once per worker: the workers share
    # the run's identity.
    suite.run_subprocess("-n", "2", "--memo-refresh").assert_outcomes(passed=8)
    assert suite.calls() == ["shared", "shared"]

    # --memo-clear clears once, in the main process, never in each worker.
    suite.run_subprocess("-n", "2", "--memo-clear").assert_outcomes(passed=8)
    assert suite.calls() == ["shared", "shared", "shared"]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Popen objects to kill at the end, whatever happened."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def start_pytest(
    suite: MemoSuite, processes: list[subprocess.Popen[str]], **env: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *SPEED_FLAGS, "-q"],
        cwd=suite.path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    processes.append(process)
    return process


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_concurrent_runs_compute_a_missing_entry_once(
    suite: MemoSuite, processes: list[subprocess.Popen[str]]
) -> None:
    suite.write("conftest.py", SHARED)
    suite.write("test_it.py", "def test_it(shared):\n    assert shared == 'shared value'\n")
    for _ in range(3):
        start_pytest(suite, processes)
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
        outputs.append(output)
    assert suite.calls() == ["shared"]
    text = "\n".join(outputs)
    assert text.count("1 passed") == 3
    assert text.count("memo: 0 hits (0.0 s saved), 1 miss") == 1
    assert text.count("memo: 1 hit (") == 2


KILLABLE = """
import os
import time
from pathlib import Path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    # Outside pytest-memo's own wrapper: runs before this process takes the entry's lock.
    if fixturedef.argname == "shared":
        Path(f"entered-{os.environ['ROLE']}").touch()
    return (yield)


# Read through a name the key cannot see (a variable named by a literal would enter the
# key): A, B and C compute the same entry.
ROLE = "ROLE"


@pytest.fixture(scope="session")
@pytest.mark.memo
def shared():
    role = os.environ[ROLE]
    record(role)
    if role == "A":
        Path("started").touch()
        time.sleep(300)
    return f"computed by {role}"
"""


def test_a_waiter_takes_over_from_a_killed_computer(
    suite: MemoSuite, processes: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.write("conftest.py", KILLABLE)
    suite.write(
        "test_it.py",
        """
        from memo_log import record


        def test_it(shared):
            record(shared, "seen.txt")
        """,
    )
    a = start_pytest(suite, processes, ROLE="A")
    wait_for(lambda: (suite.path / "started").exists() or a.poll() is not None)
    assert a.poll() is None, a.communicate()[0]
    b = start_pytest(suite, processes, ROLE="B")
    wait_for(lambda: (suite.path / "entered-B").exists() or b.poll() is not None)
    time.sleep(0.5)
    assert b.poll() is None, b.communicate()[0]
    assert suite.calls() == ["A"]  # B is waiting for A's lock, not computing
    a.kill()
    a.wait(timeout=30)

    output, _ = b.communicate(timeout=60)
    assert b.returncode == 0, output
    assert suite.calls() == ["A", "B"]
    assert suite.seen() == ["computed by B"]
    # The value B stored is good: later runs load it.
    monkeypatch.setenv("ROLE", "C")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["A", "B"]
    assert suite.seen() == ["computed by B", "computed by B"]


# -- pytest 8.4 ----------------------------------------------------------------------------


@pytest.mark.parametrize("mark_first", [True, False], ids=["mark above", "mark below"])
def test_pytest_84_decorator_orders_and_a_hit(
    suite: MemoSuite, pytest84: str, mark_first: bool
) -> None:
    decorators = ["@pytest.mark.memo(version=1)", "@pytest.fixture(scope='session')"]
    if not mark_first:
        decorators.reverse()
    suite.write(
        "conftest.py",
        "\n".join(decorators) + "\ndef data():\n    record('data')\n    return 42\n",
    )
    suite.write("test_it.py", "def test_data(data):\n    assert data == 42\n")
    for run in range(2):
        result = suite.pytester.run(
            pytest84, "-m", "pytest", "-p", "no:cacheprovider", *SPEED_FLAGS, "-W", "error",
            timeout=120,
        )  # fmt: skip
        result.assert_outcomes(passed=1, warnings=0)
        result.stdout.fnmatch_lines(["platform * pytest-8.4.*"])
        result.stdout.fnmatch_lines([f"memo: {run} hit* {1 - run} miss*"])
    assert suite.calls() == ["data"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files through /proc")
@pytest.mark.parametrize("options", [(), ("--memo-show",)], ids=["run", "memo-show"])
def test_a_run_leaves_no_index_connection_open(suite: MemoSuite, options: tuple[str, ...]) -> None:
    """Connections left to the garbage collector warn (Python 3.13+) inside whatever test
    is running then: an error for users who run with -W error."""
    suite.write("conftest.py", DATA)
    suite.write("test_it.py", TEST_SEEN)
    suite.run()  # fills the store: there is an index to open
    suite.run(*options)  # pytest in this process, so its open files are ours to see
    index = (suite.path / ".pytest_memo" / "v1" / "index.sqlite").resolve()
    open_files = {
        Path(os.readlink(fd)) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()
    }
    assert index.exists()
    assert index not in open_files


# -- checkouts sharing a store ------------------------------------------------------------

CHECKOUT_CONFTEST = """
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture
@pytest.mark.memo
def data():
    with open(HERE / "calls.txt", "a") as log:
        log.write("data\\n")
    return {RETURNED}
"""
CHECKOUT_TEST = """
from pathlib import Path

HERE = Path(__file__).parent


def test_data(data):
    assert data == {RETURNED}
"""


def write_checkouts(pytester: pytest.Pytester, returned: str) -> None:
    """Two copies of one project, ``one`` and ``two``, whose fixture returns ``returned``."""
    for checkout in ("one", "two"):
        (pytester.path / checkout).mkdir()
        (pytester.path / checkout / "pytest.ini").write_text("[pytest]\n")
        for name, template in (("conftest.py", CHECKOUT_CONFTEST), ("test_it.py", CHECKOUT_TEST)):
            (pytester.path / checkout / name).write_text(template.replace("{RETURNED}", returned))


@pytest.mark.parametrize(
    "returned",
    ['{"file": HERE / "data.txt", "all": [HERE, HERE / "sub" / "x"], "out": Path("/elsewhere")}'],
    ids=["pathlib paths"],
)
def test_checkouts_sharing_a_store_get_paths_into_their_own_checkout(
    pytester: pytest.Pytester, returned: str
) -> None:
    # The second checkout received the first one's absolute paths.
    store = pytester.path / "shared-store"
    write_checkouts(pytester, returned)
    for checkout in ("one", "two", "one"):
        result = pytester.runpytest("-p", "no:cacheprovider", f"--memo-dir={store}", checkout)
        result.assert_outcomes(passed=1)
    assert (pytester.path / "one" / "calls.txt").read_text() == "data\n"
    assert not (pytester.path / "two" / "calls.txt").exists()  # loaded, rebased


def test_a_str_path_into_the_checkout_is_computed_not_shared(pytester: pytest.Pytester) -> None:
    returned = 'str(HERE / "data.txt")'
    store = pytester.path / "shared-store"
    write_checkouts(pytester, returned)
    for checkout in ("one", "two"):
        result = pytester.runpytest("-p", "no:cacheprovider", f"--memo-dir={store}", checkout)
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(
            ["*MemoWarning*fixture 'data' could not be stored*holds the path of this checkout*"]
        )
    assert (pytester.path / "two" / "calls.txt").read_text() == "data\n"
