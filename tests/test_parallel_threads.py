"""pytest --par-mode=thread: tests run at the same time in one process, with the fixture
values of a serial run; tests that change process-wide state run alone."""

from __future__ import annotations

import itertools
import textwrap

import pytest
from parallel_suite import FLAGS, lines


def test_thread_mode_rules(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_threads="""
        import threading, time, pytest

        @pytest.fixture(scope="session")
        def once():
            open("session.txt", "a").write("set up\\n")
            yield
            open("session.txt", "a").write("torn down\\n")

        def span(name):
            start = time.monotonic()
            time.sleep(0.2)
            open("spans.txt", "a").write(f"{name} {start} {time.monotonic()}\\n")

        @pytest.mark.parametrize("i", range(6))
        def test_parallel(i, once):
            span(f"parallel{i}")

        @pytest.mark.serial
        def test_alone(once):
            span("alone")
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=3", "--par-mode=thread")
    result.assert_outcomes(passed=7)
    assert (pytester.path / "session.txt").read_text().split("\n")[:2] == ["set up", "torn down"]
    spans = {name: (float(a), float(b)) for name, a, b in lines(pytester.path / "spans.txt")}
    alone_start, alone_end = spans.pop("alone")
    for start, end in spans.values():
        assert end <= alone_start or start >= alone_end  # nothing overlapped the serial test
    assert any(  # and the others did run at the same time
        a[0] < b[1] and b[0] < a[1] for a in spans.values() for b in spans.values() if a != b
    )


def test_thread_mode_runs_tests_that_change_process_state_alone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_state="""
        import logging, os, time, warnings, pytest

        @pytest.fixture
        def home(monkeypatch):  # monkeypatch reached through another fixture
            monkeypatch.setenv("HOME_FOR_TEST", "x")
            return "x"

        @pytest.mark.parametrize("i", range(3))
        def test_capsys(capsys, i):
            print(f"hello {i}")
            time.sleep(0.1)
            assert capsys.readouterr().out == f"hello {i}\\n"

        @pytest.mark.parametrize("i", range(3))
        def test_capfd(capfd, i):
            os.write(1, f"fd {i}\\n".encode())
            time.sleep(0.1)  # the main thread's progress output must not land here
            assert capfd.readouterr().out == f"fd {i}\\n"

        @pytest.mark.parametrize("i", range(3))
        def test_caplog(caplog, i):
            logging.getLogger("mine").warning("record %s", i)
            time.sleep(0.1)
            assert [r.getMessage() for r in caplog.records] == [f"record {i}"]

        @pytest.mark.parametrize("i", range(3))
        def test_recwarn(recwarn, i):
            warnings.warn(f"warning {i}")
            time.sleep(0.1)
            assert [str(w.message) for w in recwarn] == [f"warning {i}"]

        @pytest.mark.parametrize("i", range(3))
        def test_monkeypatch(monkeypatch, i):
            monkeypatch.setenv("VALUE_FOR_TEST", str(i))
            time.sleep(0.1)
            assert os.environ["VALUE_FOR_TEST"] == str(i)

        @pytest.mark.parametrize("i", range(3))
        def test_indirect(home, i):
            time.sleep(0.1)
            assert os.environ["HOME_FOR_TEST"] == home
            os.environ["HOME_FOR_TEST"] = "changed"  # undone by monkeypatch's teardown

        def test_ordinary():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=4", "--par-mode=thread", "-v")
    result.assert_outcomes(passed=19)
    result.stdout.fnmatch_lines(
        [
            "par: 18 of 19 tests ran alone in thread mode, as they change what all threads "
            "share (process mode runs them in parallel): using capsys: 3; using capfd: 3; "
            "using caplog: 3; using recwarn: 3; using monkeypatch: 3; using monkeypatch "
            "through the fixture home of test_state: 3"
        ]
    )


FIXTURE_SCOPES = {
    "conftest": """
    import pytest

    def log(line):
        with open("log.txt", "a") as out:
            out.write(line + "\\n")

    @pytest.fixture(scope="session")
    def session_value():
        log("set up session")
        yield object()
        log("tear down session")

    @pytest.fixture(scope="module")
    def module_name(request):
        log(f"set up module {request.module.__name__}")
        yield request.module.__name__
        log(f"tear down module {request.module.__name__}")

    @pytest.fixture(scope="class")
    def class_name(request):
        return request.cls.__name__

    @pytest.fixture(scope="module", params=["a", "b"])
    def backend(request):
        log(f"open {request.param}")
        value = {"name": request.param, "open": True}
        yield value
        value["open"] = False
        log(f"close {request.param}")

    @pytest.fixture(scope="module")
    def client(backend):  # depends on a parametrized fixture: one per parameter
        return f"client of {backend['name']}"

    @pytest.fixture
    def fresh(tmp_path):
        value = []
        yield value
        value.append("torn down")
    """,
    "test_one": """
    import time, pytest

    def test_module(module_name, session_value):
        time.sleep(0.1)
        assert module_name == "test_one"

    class TestA:
        def test_a(self, class_name):
            time.sleep(0.1)
            assert class_name == "TestA"

    class TestB:
        def test_b(self, class_name):
            time.sleep(0.1)
            assert class_name == "TestB"

    @pytest.mark.parametrize("i", range(3))
    def test_backend(i, backend, client, fresh, tmp_path):
        fresh.append(i)
        (tmp_path / "case").write_text(str(i))
        time.sleep(0.1)  # the others run meanwhile
        assert backend["open"] and client == f"client of {backend['name']}"
        assert fresh == [i] and (tmp_path / "case").read_text() == str(i)
    """,
    "test_two": """
    import time

    def test_module(module_name, session_value):
        time.sleep(0.1)
        assert module_name == "test_two"
    """,
}


# Each test's span, from the setup of its function-scoped fixtures to their teardown:
# tests that ran at the same time have spans that overlap.
SPANS = """
import time


@pytest.fixture(autouse=True)
def span(request):
    start = time.monotonic()
    yield
    with open("spans.txt", "a") as out:
        out.write(f"{request.node.nodeid} {start} {time.monotonic()}\\n")
"""


def test_thread_mode_gives_fixtures_the_values_of_a_serial_run(pytester: pytest.Pytester) -> None:
    # Tests that run at the same time still get their own function-scoped values, the
    # class- and module-scoped values made for their class and module, and the values
    # made for their parameters; each is set up and torn down once.
    conftest = textwrap.dedent(FIXTURE_SCOPES["conftest"]) + SPANS
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_one=FIXTURE_SCOPES["test_one"], test_two=FIXTURE_SCOPES["test_two"])
    serial = pytester.runpytest_subprocess(*FLAGS)
    serial.assert_outcomes(passed=10)
    serial_log = sorted((pytester.path / "log.txt").read_text().splitlines())
    (pytester.path / "log.txt").unlink()
    (pytester.path / "spans.txt").unlink()
    result = pytester.runpytest_subprocess(*FLAGS, "--par=4", "--par-mode=thread")
    result.assert_outcomes(passed=10)
    spans = [(float(start), float(end)) for _, start, end in lines(pytester.path / "spans.txt")]
    assert len(spans) == 10
    assert any(  # tests did run at the same time
        a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2)
    )
    assert sorted((pytester.path / "log.txt").read_text().splitlines()) == serial_log


def test_thread_mode_warns_when_a_plugin_replaces_the_test_protocol(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest
        from _pytest.runner import runtestprotocol

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_protocol(item, nextitem):
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            runtestprotocol(item, nextitem=nextitem)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
        """
    )
    pytester.makepyfile(test_two="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    warning = "*--par-mode=thread runs pytest's own test protocol, so the one of *conftest.py*"
    thread = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--par-mode=thread")
    thread.assert_outcomes(passed=2, warnings=1)
    thread.stdout.fnmatch_lines([warning])
    process = pytester.runpytest_subprocess(*FLAGS, "--par=2")
    process.assert_outcomes(passed=2)


def test_thread_mode_fails_the_run_on_an_error_in_a_shared_fixture_teardown(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_teardown="""
        import pytest

        @pytest.fixture(scope="module")
        def resource():
            yield 1
            raise RuntimeError("teardown went wrong")

        @pytest.mark.parametrize("i", range(3))
        def test_uses(i, resource):
            assert resource == 1
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--par=2", "--par-mode=thread")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*error while tearing down shared fixtures: RuntimeError('teardown went wrong')*",
            '*raise RuntimeError("teardown went wrong")',
        ]
    )
    assert "pytest_memo" not in result.stdout.str()
