"""Fixture values in thread mode: one per test, class, module, package or session, as serial.

pytest keeps one value and one list of finalizers per fixture definition, and relies on
running one test at a time: before a test of another class, module or parameter, the
old value is torn down and the next test gets a new one.  With tests running at once in
threads, that would hand a test another test's function-scoped value, a class- or
module-scoped value made for another class or module, or tear a value down under a test
still using it.

So, for the run, each fixture definition keeps its values and finalizers per *context*:
the node the fixture's scope names for the requesting test (the test itself, its class,
module, package or the session), together with the test's parameters of that scope or
wider (a module-scoped fixture made for parameter ``a`` is not the one for ``b``, nor
are the fixtures that depend on it).  pytest's own code reads ``cached_result`` and
``_finalizers`` as before and sees the context of the request it is serving: the
definitions' class is swapped, for the run, for a subclass that says so.  Values of
wider scopes live until the end of the run (other threads may still use them), so
several contexts of one fixture can be alive at once, where a serial run keeps one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Hashable
from typing import Any

import pytest

from pytest_memo.pytest_compat import (
    FIXTURE_FINALIZERS_ATTRIBUTE,
    all_fixture_definitions,
    item_fixture_definitions,
    requesting_item,
)

__all__ = ["fixtures_per_context"]

SCOPE_RANK = {"function": 0, "class": 1, "module": 2, "package": 3, "session": 4}
_STATE = "_pytest_memo_contexts"


class _Contexts:
    """One fixture definition's values and finalizers, by context."""

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock  # the runner's fixture lock: one setup or teardown at a time
        self.results: dict[Hashable, Any] = {}
        self.finalizers: dict[Hashable, list[Callable[[], object]]] = {}
        self.local = threading.local()  # the context this thread is serving

    @property
    def current(self) -> Hashable:
        return getattr(self.local, "context", None)

    def serve(self, context: Hashable) -> None:
        """From now on this thread reads and writes ``context``: pytest reads the value
        it has just made after ``execute`` returns."""
        self.local.context = context


def _contexts(definition: Any) -> _Contexts:
    contexts: _Contexts = definition.__dict__[_STATE]
    return contexts


def _get_result(definition: Any) -> Any:
    contexts = _contexts(definition)
    return contexts.results.get(contexts.current)


def _set_result(definition: Any, value: Any) -> None:
    contexts = _contexts(definition)
    if value is None:
        contexts.results.pop(contexts.current, None)
    else:
        contexts.results[contexts.current] = value


def _get_finalizers(definition: Any) -> list[Callable[[], object]]:
    contexts = _contexts(definition)
    return contexts.finalizers.setdefault(contexts.current, [])


def _by_context(original: type) -> type:
    """A subclass of a fixture definition class that keeps values by context.  It adds
    no instance storage, so definitions can change class for the run and back.

    Values are made and torn down under the runner's fixture lock, also when a test body
    asks for one (``request.getfixturevalue``) outside its setup: two threads making the
    same session value at once both ran the fixture and failed in pytest's
    ``assert not self._finalizers``."""

    def execute(self: Any, request: Any) -> Any:
        contexts = _contexts(self)
        with contexts.lock:
            contexts.serve(_context(self, request))
            return original.execute(self, request)  # type: ignore[attr-defined]

    def finish(self: Any, request: Any) -> None:
        contexts, context = _contexts(self), _context(self, request)
        with contexts.lock:
            contexts.serve(context)
            try:
                original.finish(self, request)  # type: ignore[attr-defined]
            finally:
                if context not in contexts.results:
                    contexts.finalizers.pop(context, None)

    namespace = {
        "cached_result": property(_get_result, _set_result),
        FIXTURE_FINALIZERS_ATTRIBUTE: property(_get_finalizers),
        "execute": execute,
        "finish": finish,
    }
    return type(f"ByContext{original.__name__}", (original,), namespace)


def _context(definition: Any, request: Any) -> Hashable:
    """The scope's node for the requesting test, and the test's parameters of that scope
    or wider that the fixture depends on: its own and those of the fixtures it requests,
    directly or through others (parameter indices: values may not be hashable).  As in a
    serial run, an unparametrized fixture beside a parametrized one is made once."""
    item = requesting_item(request)
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return (request.node, ())
    rank = SCOPE_RANK.get(definition.scope, 0)
    known = item_fixture_definitions(item)
    depends_on = _dependencies(definition, known)
    parameters = []
    for name, index in sorted(callspec.indices.items()):
        if name not in depends_on:
            continue
        definitions = known.get(name)
        scope = definitions[-1].scope if definitions else "function"
        if SCOPE_RANK.get(scope, 0) >= rank:
            parameters.append((name, index))
    return (request.node, tuple(parameters))


def _dependencies(definition: Any, known: dict[str, Any]) -> set[str]:
    """The names ``definition`` is, and requests directly or through other fixtures."""
    names = {definition.argname}
    pending = [definition]
    seen = {id(definition)}
    while pending:
        current = pending.pop()
        for name in current.argnames:
            names.add(name)
            # A fixture overriding one of its name requests the overridden one: all the
            # definitions of a name are followed.
            for dependency in known.get(name, ()):
                if id(dependency) not in seen:
                    seen.add(id(dependency))
                    pending.append(dependency)
    return names


_CLASSES: dict[type, type] = {}


@contextlib.contextmanager
def fixtures_per_context(
    session: pytest.Session, lock: threading.RLock
) -> Generator[None, None, None]:
    """For the block, every fixture definition of the session keeps values by context,
    made and torn down under ``lock``."""
    changed = []
    for definition in _fixture_definitions(session):
        if _STATE in definition.__dict__:
            continue
        original = type(definition)
        if original not in _CLASSES:
            _CLASSES[original] = _by_context(original)
        definition.__dict__[_STATE] = _Contexts(lock)
        definition.__class__ = _CLASSES[original]
        changed.append((definition, original))
    try:
        yield
    finally:
        for definition, original in changed:
            definition.__class__ = original
            del definition.__dict__[_STATE]


def _fixture_definitions(session: pytest.Session) -> list[Any]:
    """Every fixture definition the run can use: those the tests ask for (direct
    parametrization included) and those a test may look up by name."""
    registered = all_fixture_definitions(session)
    for item in session.items:
        for definitions in item_fixture_definitions(item).values():
            registered.extend(definitions)
    return list({id(definition): definition for definition in registered}.values())
