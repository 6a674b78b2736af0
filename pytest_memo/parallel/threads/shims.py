"""Per-thread stand-ins for pytest's session state.

pytest keeps one stack of set-up nodes (``session._setupstate``) and, moving to the next
test, tears down the nodes it leaves.  Each thread gets its own stack instead; the
finalizers of the modules and classes a thread leaves are kept for the end of the run,
when no thread can still be using their fixtures.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_memo.pytest_compat import SetupState, set_setup_state, setup_state

__all__ = ["ParentsOnly", "per_thread_setup_states"]

Finalizer = Callable[[], object]


class ParentsOnly:
    """Stands for "the next item" at teardown: keep the item's parents set up."""

    def __init__(self, item: pytest.Item) -> None:
        self._chain = item.listchain()[:-1]

    def listchain(self) -> list[Any]:
        return self._chain


class _Deferred:
    """Finalizers kept for the end of the run, from every thread."""

    def __init__(self) -> None:
        self.finalizers: list[Finalizer] = []
        self._lock = threading.Lock()

    def extend(self, finalizers: list[Finalizer]) -> None:
        with self._lock:
            self.finalizers.extend(finalizers)


class _KeepWiderScopes(SetupState):
    """A thread's setup state.  When the thread moves to another module or class, the
    finalizers of the one it leaves are kept for the end of the run instead of being run:
    other threads may still be using its fixtures."""

    def __init__(self, deferred: _Deferred) -> None:
        super().__init__()
        self._deferred = deferred

    def setup(self, item: pytest.Item) -> None:
        needed = item.listchain()
        while self.stack and list(self.stack) != needed[: len(self.stack)]:
            _, (finalizers, _) = self.stack.popitem()
            self._deferred.extend(finalizers)
        super().setup(item)


class _PerThread:
    """Put in place of ``session._setupstate``: each thread sees its own."""

    def __init__(self, main: SetupState, factory: Callable[[], SetupState]) -> None:
        self._main = main
        self._factory = factory
        self._local = threading.local()
        self.states: list[SetupState] = []

    def current(self) -> SetupState:
        if threading.current_thread() is threading.main_thread():
            return self._main
        state: SetupState | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = self._factory()
            self.states.append(state)
        return state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current(), name)


@contextlib.contextmanager
def per_thread_setup_states(
    session: pytest.Session, errors: list[Exception]
) -> Generator[None, None, None]:
    """For the block, each thread has its own setup state.  After it, once the session's
    own is back, every fixture the threads set up is torn down: what each thread still
    has set up, then what they kept, newest first.  Errors go to ``errors``."""
    deferred = _Deferred()
    original = setup_state(session)
    states = _PerThread(original, lambda: _KeepWiderScopes(deferred))
    set_setup_state(session, states)
    try:
        yield
    finally:
        set_setup_state(session, original)
        errors.extend(_run_all(_finalizers(states.states, deferred)))


def _finalizers(states: list[SetupState], deferred: _Deferred) -> list[Finalizer]:
    return [
        *(lambda s=state: s.teardown_exact(None) for state in states),
        *reversed(deferred.finalizers),
    ]


def _run_all(finalizers: list[Finalizer]) -> list[Exception]:
    """Run every finalizer, even after one fails; the errors."""
    errors = []
    for finalizer in finalizers:
        try:
            finalizer()
        except Exception as error:
            errors.append(error)
    return errors
