"""Session fixtures set up once per run: ``@pytest_memo.once_per_run``.

With ``--par``, a session fixture is set up in each worker that needs it.  One decorated
with ``once_per_run`` is set up once, in the main process, before the workers start,
and torn down there after they have all finished; every worker uses that one value:
forked workers inherit it, thread workers share it, spawned workers get it pickled.  For
servers, containers and databases that a whole run shares.  Without ``--par`` it is an
ordinary session fixture.

    @pytest.fixture(scope="session")
    @pytest_memo.once_per_run
    def database():
        ...

A decorator and not a mark: pytest 9 rejects marks on fixtures.
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import pytest

from pytest_memo.pytest_compat import all_fixture_definitions, compute_session_fixture

__all__ = ["once_per_run", "set_up_in_main_process"]

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "_pytest_memo_once_per_run"
VALUES_VARIABLE = "PYTEST_MEMO_PAR_ONCE"  # spawned workers: a pickle of the values

# Values set up here (the main process, or a serial run), or by the main process for
# this worker, by fixture (module:qualname).
_values: dict[str, Any] = {}
_loaded = False


def once_per_run(function: F) -> F:
    """Under ``@pytest.fixture(scope="session")``: with ``--par``, set the fixture up once
    in the main process for every worker (see this module)."""
    key = f"{function.__module__}:{function.__qualname__}"

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
        values = _shared_values()
        # One value per parameter of a parametrized fixture (its request tells which).
        request = kwargs.get("request")
        slot = f"{key}[{getattr(request, 'param_index', 0)}]"
        if slot in values:  # set up by the main process: its to tear down
            yield values[slot]
            return
        owner = os.getpid()
        steps = None
        if inspect.isgeneratorfunction(function):
            steps = function(*args, **kwargs)
            value = next(steps)
        else:
            value = function(*args, **kwargs)
        values[slot] = value
        try:
            yield value
        finally:
            if os.getpid() == owner:  # not a forked worker's copy
                values.pop(slot, None)
                if steps is not None:
                    for _ in steps:
                        raise ValueError(f"fixture {function.__name__} has more than one yield")

    setattr(wrapper, ATTRIBUTE, key)
    return wrapper  # type: ignore[return-value]


def _shared_values() -> dict[str, Any]:
    """The values, with those a spawned worker's main process sent it."""
    global _loaded
    if not _loaded:
        _loaded = True
        path = os.environ.get(VALUES_VARIABLE)
        if path:
            with open(path, "rb") as file:
                _values.update(pickle.load(file))
    return _values


def set_up_in_main_process(session: pytest.Session) -> Callable[[], None]:
    """Set up every once-per-run fixture the collected tests use, before the workers
    start, and offer their values to spawned workers; returns what to call once the
    workers are done (the fixtures themselves are torn down as session fixtures are,
    when the session finishes).  A fixture whose setup fails fails the tests that use
    it, as in a serial run (spawned workers try it again themselves)."""
    users: dict[str, pytest.Item] = {}
    for definition in all_fixture_definitions(session):
        if getattr(definition.func, ATTRIBUTE, None) is None:
            continue
        if definition.scope != "session":
            raise pytest.UsageError(
                f"once_per_run fixture {definition.argname!r} must be session-scoped"
            )
        for item in session.items:
            if definition.argname in getattr(item, "fixturenames", ()):
                users.setdefault(definition.argname, item)
                break
    keys = []
    for name, item in users.items():
        try:
            compute_session_fixture(item, name)
        except Exception:  # kept by pytest, and raised for each test that uses it
            continue
        keys.append(name)
    if not keys:
        return lambda: None
    teardown = _TeardownReporter(session)
    shareable = {}
    for key, value in _values.items():
        try:
            pickle.dumps(value)
            shareable[key] = value
        except Exception as error:
            warnings.warn(
                f"once_per_run fixture {key}: its value cannot be pickled ({error}); spawned "
                "workers set it up themselves",
                pytest.PytestWarning,
                stacklevel=1,
            )
    with tempfile.NamedTemporaryFile("wb", prefix="pytest-memo-once-", delete=False) as file:
        pickle.dump(shareable, file)
    os.environ[VALUES_VARIABLE] = file.name

    def done() -> None:
        os.environ.pop(VALUES_VARIABLE, None)
        os.unlink(file.name)
        teardown()

    return done


class _TeardownReporter:
    """Tears the main process's session fixtures down once the workers are done, and
    reports a teardown that fails as an error of the last test, as a serial run does
    (left to pytest's session finish, it would end the run with a bare traceback)."""

    def __init__(self, session: pytest.Session) -> None:
        self.session = session

    def __call__(self) -> None:
        if sys.exc_info()[0] is not None or not self.session.items:
            return  # interrupted: pytest's session finish tears them down
        state = self.session._setupstate
        call = pytest.CallInfo.from_call(lambda: state.teardown_exact(None), when="teardown")
        if call.excinfo is None:
            return
        item = self.session.items[-1]
        report = pytest.TestReport.from_item_and_call(item, call)
        self.session.config.hook.pytest_runtest_logreport(report=report)
