"""One test's protocol in a worker thread: setup, call and teardown, as pytest runs them.

Fixture setup and teardown run one at a time (a lock shared by the threads), so a
session or module fixture is created once and shared; test bodies run concurrently.
Reports are returned, not logged: the main thread replays them.
"""

from __future__ import annotations

import threading
import warnings

import pytest

from pytest_memo.parallel.threads.assertions import ThreadAssertions
from pytest_memo.parallel.threads.shims import ParentsOnly
from pytest_memo.pytest_compat import call_and_report, fixture_values_released

__all__ = ["run_item", "warn_of_replaced_protocols"]


def run_item(
    item: pytest.Item, fixture_lock: threading.RLock, assertions: ThreadAssertions
) -> list[pytest.TestReport]:
    """The reports of ``item``'s setup, call (if setup passed) and teardown."""
    with fixture_values_released(item):
        with fixture_lock:
            assertions.prepare(item)
            reports = [call_and_report(item, "setup", log=False)]
        if reports[0].passed and not item.config.getoption("setuponly", False):
            reports.append(call_and_report(item, "call", log=False))
        with fixture_lock:
            # Wider-scoped fixtures stay up: other threads may be using them.
            reports.append(call_and_report(item, "teardown", log=False, nextitem=ParentsOnly(item)))
    return reports


def warn_of_replaced_protocols(session: pytest.Session) -> None:
    """Thread mode runs pytest's own test protocol (setup, call, teardown): plugins that
    replace it (pytest-rerunfailures, flaky) would silently not apply."""
    replacing = sorted(
        {
            impl.plugin_name
            for impl in session.config.hook.pytest_runtest_protocol.get_hookimpls()
            if not (impl.wrapper or impl.hookwrapper)
            and impl.plugin_name != "runner"
            and _would_replace(impl.plugin, session.items)
        }
    )
    if replacing:
        warnings.warn(
            pytest.PytestWarning(
                f"--par-mode=thread runs pytest's own test protocol, so the one of "
                f"{', '.join(replacing)} does not apply; use --par-mode=process"
            ),
            stacklevel=2,
        )


def _would_replace(plugin: object, items: list[pytest.Item]) -> bool:
    """Whether a plugin's protocol would run for any of ``items``.  pytest-rerunfailures'
    hands every test back to pytest's protocol unless it has reruns to do (``--reruns``, a
    ``flaky`` mark): installed but unused, it loses nothing in thread mode."""
    reruns_of = getattr(plugin, "get_reruns_count", None)
    if getattr(plugin, "__name__", "") != "pytest_rerunfailures" or not callable(reruns_of):
        return True
    return any(reruns_of(item) for item in items)
