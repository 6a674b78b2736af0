"""Thread mode with real plugins: what it cannot make safe runs alone, is warned of, or refused.

The plugins (pytest-mock, pytest-django with Django, pytest-timeout, pytest-asyncio,
pytest-rerunfailures) are
not installed in the project's environment: they would load into every inner pytest run
of the other tests.  They live in a separate environment whose interpreter
``PYTEST_MEMO_PLUGINS_PYTHON`` names (tasks.py makes it); without it these tests skip.
"""

from __future__ import annotations

import os

import pytest

PYTHON = os.environ.get("PYTEST_MEMO_PLUGINS_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not PYTHON,
    reason="PYTEST_MEMO_PLUGINS_PYTHON names no interpreter with pytest-mock, pytest-django, "
    "pytest-timeout, pytest-asyncio and pytest-rerunfailures installed",
)

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
FLAGS += ("-p", "no:randomly")  # (pytest-randomly's order is compared in test_parallel_plugins)
THREADS = (*FLAGS, "--par=2", "--par-mode=thread")
WITHOUT_DJANGO = ("-p", "no:django")  # its autouse fixture makes every test run alone


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(PYTHON, "-m", "pytest", *THREADS, *args)


def test_tests_using_mocker_run_alone(pytester: pytest.Pytester) -> None:
    # The first two tests wait for each other: ordinary tests still run at once.
    pytester.makepyfile(
        """
        import os, threading

        both_running = threading.Barrier(2, timeout=30)

        def test_first():
            both_running.wait()
            assert os.getcwd() != "patched"

        def test_second():
            both_running.wait()
            assert os.getcwd() != "patched"

        def test_patches(mocker):
            mocker.patch("os.getcwd", return_value="patched")
            assert os.getcwd() == "patched"

        def test_after():
            assert os.getcwd() != "patched"
        """
    )
    result = run(pytester, *WITHOUT_DJANGO)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["par: 1 of 4 tests ran alone in thread mode, as *: using mocker (pytest-mock): 1"]
    )


def test_asyncio_tests_sharing_a_session_loop_run_alone(pytester: pytest.Pytester) -> None:
    # Before, two of them ran the one loop at once: "This event loop is already running".
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = session
        asyncio_default_test_loop_scope = session
        """
    )
    pytester.makepyfile(
        """
        import asyncio, pytest

        @pytest.fixture(scope="session")
        async def resource():
            return "ready"

        @pytest.mark.parametrize("i", range(4))
        async def test_async(i, resource):
            await asyncio.sleep(0)
            assert resource == "ready"

        def test_sync():
            pass
        """
    )
    result = run(pytester, *WITHOUT_DJANGO)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["par: 4 of 5 tests ran alone in thread mode, as *: asyncio *: 4"])


def test_pytest_timeout_limits_are_said_to_be_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.timeout(60)
        def test_limited():
            pass
        """
    )
    result = run(pytester, *WITHOUT_DJANGO)
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*pytest-timeout's time limits do not apply in --par-mode=thread*--par-mode=process*"]
    )
    # Without a limit to apply, nothing to say.
    pytester.makepyfile(test_unlimited="def test_unlimited():\n    pass\n")
    run(pytester, *WITHOUT_DJANGO, "test_unlimited.py").assert_outcomes(passed=1, warnings=0)


def test_pytest_rerunfailures_is_said_not_to_apply_only_where_it_would_rerun(
    pytester: pytest.Pytester,
) -> None:
    # Before, installing it was enough for the warning, --reruns or not.
    pytester.makepyfile("def test_plain():\n    pass\n")
    unused = run(pytester, *WITHOUT_DJANGO)
    unused.assert_outcomes(passed=1, warnings=0)
    for reruns in (("--reruns=1",), ()):
        if not reruns:
            pytester.makepyfile(
                "import pytest\n\n@pytest.mark.flaky(reruns=2)\ndef test_plain():\n    pass\n"
            )
        result = run(pytester, *WITHOUT_DJANGO, *reruns)
        result.assert_outcomes(passed=1, warnings=1)
        result.stdout.fnmatch_lines(
            ["*runs pytest's own test protocol, so the one of rerunfailures does not apply*"]
        )


DJANGO_SETTINGS = """
SECRET_KEY = "only for tests"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
"""


def django_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(project_settings=DJANGO_SETTINGS)
    pytester.makeini(
        """
        [pytest]
        DJANGO_SETTINGS_MODULE = project_settings
        pythonpath = .
        """
    )


def test_django_database_tests_are_refused_naming_process_mode(
    pytester: pytest.Pytester,
) -> None:
    # Before, a TestCase's second test failed ("database table is locked"): the class's
    # transaction was opened on another thread's connection.
    django_project(pytester)
    pytester.makepyfile(
        """
        from django.contrib.auth.models import User
        from django.test import TestCase

        class TestUsers(TestCase):
            def test_one(self):
                User.objects.create(username="one")
                assert User.objects.count() == 1

            def test_two(self):
                User.objects.create(username="two")
                assert User.objects.count() == 1
        """
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --par-mode=thread cannot run Django database tests (2, such as "
            "test_django_database_tests_are_refused_naming_process_mode.py::TestUsers::"
            "test_one): *use --par-mode=process*"
        ]
    )
    run_in_processes = pytester.run(PYTHON, "-m", "pytest", *FLAGS, "--par=2")
    run_in_processes.assert_outcomes(passed=2)


def test_the_summary_names_pytest_djangos_autouse_fixture(pytester: pytest.Pytester) -> None:
    django_project(pytester)
    pytester.makepyfile(
        """
        def test_one():
            pass

        def test_two():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "par: 2 of 2 tests ran alone in thread mode, as *: using monkeypatch through the "
            "autouse fixture _template_string_if_invalid_marker of pytest_django.plugin: 2"
        ]
    )
