"""What thread mode does with other plugins that it cannot make safe: says so, or refuses.

Thread mode runs pytest's own setup, call and teardown in worker threads, not pytest's
``pytest_runtest_protocol`` hook: what plugins do there does not happen.  pytest's own
wrappers of that hook are taken care of (warnings, assertion explanations) or do nothing
(unittest's, for twisted only); the others are named in a warning.  Tests that a plugin
runs one at a time by design are run alone (``gate``); Django's database tests cannot be
made safe by that and are refused.  docs/parallel.md has the table, plugin by plugin.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest

from pytest_memo.parallel.threads.protocol import warn_of_replaced_protocols

__all__ = ["check_plugins"]

# pytest's wrappers of pytest_runtest_protocol that thread mode does the work of (or that
# have no work to do in it).
_HANDLED_WRAPPERS = frozenset({"assertion", "warnings", "unittest", "runner"})

# pytest-django's fixtures that give a test the database.
_DJANGO_DATABASE_FIXTURES = frozenset(
    {
        "db",
        "transactional_db",
        "django_db_reset_sequences",
        "django_db_serialized_rollback",
        "live_server",
    }
)


def check_plugins(session: pytest.Session) -> None:
    """Before a thread-mode run: warn of what other plugins would do that does not happen,
    and refuse (a usage error) tests that cannot run in threads."""
    warn_of_replaced_protocols(session)
    _warn_of_protocol_wrappers(session)
    _refuse_django_database_tests(session)


def _warn_of_protocol_wrappers(session: pytest.Session) -> None:
    config = session.config
    for impl in config.hook.pytest_runtest_protocol.get_hookimpls():
        name = impl.plugin_name
        if not (impl.wrapper or impl.hookwrapper) or name in _HANDLED_WRAPPERS:
            continue
        if name.startswith("pytest_memo"):
            continue
        if name == "faulthandler":
            if _faulthandler_timeout(config) > 0:
                _warn(
                    "faulthandler_timeout does not apply in --par-mode=thread (faulthandler "
                    "keeps one timer per process, not one per test): no traceback is dumped "
                    "for a slow test; use --par-mode=process (or --par-timeout, which shows "
                    "where a timed-out test hung)"
                )
            continue
        if name == "timeout":
            if _pytest_timeout_configured(session):
                _warn(
                    "pytest-timeout's time limits do not apply in --par-mode=thread (it "
                    "times a test from its pytest_runtest_protocol wrapper, and its signal "
                    "method works in the main thread only): tests run without a time "
                    "limit; use --par-mode=process, or --par-timeout"
                )
            continue
        _warn(
            f"--par-mode=thread does not run the pytest_runtest_protocol wrapper of {name}: "
            f"what it does around each test does not happen; use --par-mode=process"
        )


def _warn(message: str) -> None:
    warnings.warn(pytest.PytestWarning(message), stacklevel=3)


def _faulthandler_timeout(config: pytest.Config) -> float:
    try:
        return float(config.getini("faulthandler_timeout") or 0)
    except (ValueError, TypeError):
        return 0.0


def _pytest_timeout_configured(session: pytest.Session) -> bool:
    """Whether pytest-timeout has a time limit to apply: an option, the ini option, its
    environment variable, or a ``timeout`` mark."""
    config = session.config
    try:
        ini = config.getini("timeout")
    except ValueError:  # not pytest-timeout's
        ini = None
    for given in (config.getoption("timeout", None), ini, os.environ.get("PYTEST_TIMEOUT")):
        if given not in (None, "", "0", 0):
            return True
    return any(item.get_closest_marker("timeout") is not None for item in session.items)


def _refuse_django_database_tests(session: pytest.Session) -> None:
    """Django keeps a database connection per thread: a TestCase's class-wide transaction,
    made in one thread, locks the tests of its class that run in another, and connections
    left open in worker threads keep the test databases from being dropped."""
    refused = [item.nodeid for item in session.items if _uses_django_database(item)]
    if refused:
        raise pytest.UsageError(
            f"--par-mode=thread cannot run Django database tests ({len(refused)}, such as "
            f"{refused[0]}): Django keeps a database connection per thread, so a TestCase's "
            f"transaction would span threads and test databases would be left behind; use "
            f"--par-mode=process (or deselect them)"
        )


def _uses_django_database(item: pytest.Item) -> bool:
    django_test = sys.modules.get("django.test")
    if django_test is None:
        return False
    cls = getattr(item, "cls", None)
    if isinstance(cls, type) and issubclass(cls, django_test.TransactionTestCase):
        return True
    if item.get_closest_marker("django_db") is not None:
        return True
    return not _DJANGO_DATABASE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
