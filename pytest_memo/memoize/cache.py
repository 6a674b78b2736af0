"""``pytest_memo.cache``: memoize a plain function in the store, as ``joblib.Memory.cache`` does.

Inside a pytest run the function uses the run's store (``--memo-dir``; nothing is stored
with ``--memo-off``); outside pytest it uses ``$PYTEST_MEMO_DIR`` or ``.pytest_memo`` in
the current directory.  Keys follow the same rules as memoized fixtures: the function's
identity and code (and the project code it calls), its arguments, ``version``.  Hits and
misses count in the run's statistics and in ``--memo-show`` as a fixture's do.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import reprlib
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

from pytest_memo.core.hashing import hash
from pytest_memo.memoize import current, explain, reads
from pytest_memo.memoize.engine import Lookup, Memoized, NotMemoized, code_location, warn
from pytest_memo.memoize.keys import PYTHON, CodeFingerprints, combine
from pytest_memo.memoize.marker import parse_age
from pytest_memo.memoize.stats import RunStats
from pytest_memo.store import signing
from pytest_memo.store.local import Store
from pytest_memo.store.location import local_directory, refusal

__all__ = ["cache"]

F = TypeVar("F", bound=Callable[..., Any])


class _Active:
    """The stores cached functions use: the run's in a pytest run, their own outside one.
    Each is one attribute, assigned at once: a thread must never see the engine of one
    store with the code fingerprints of none (it then set up a store of its own, counting
    apart)."""

    Using = tuple[Memoized | NotMemoized, CodeFingerprints]
    in_run: Using | None = None
    outside: Using | None = None
    changing = threading.Lock()  # first calls may come from several threads at once


def _current() -> _Active.Using:
    run = current.set_up()  # in a pytest run, its memo state (set up on first use)
    if run is None:  # after a run too (pytest.main() returned): not that run's store
        return _Active.outside or _set_up_outside()
    using = _Active.in_run
    if using is not None and using[0] is run.engine:
        return using
    with _Active.changing:
        using = _Active.in_run
        if using is None or using[0] is not run.engine:
            using = _Active.in_run = (run.engine, CodeFingerprints(run.settings.rootdir))
        return using


def _set_up_outside() -> _Active.Using:
    with _Active.changing:
        if _Active.outside is None:
            _Active.outside = (_outside_pytest(), CodeFingerprints(Path.cwd()))
        return _Active.outside


def _outside_pytest() -> Memoized | NotMemoized:
    """The engine of a store of their own, for cached functions called outside pytest."""
    directory = local_directory(Path.cwd(), os.environ.get("PYTEST_MEMO_DIR")).resolve()
    problem = refusal(directory, Path.cwd(), "$PYTEST_MEMO_DIR")
    if problem is not None:
        warn(f"{problem}; until then, cached functions compute every call")
        return NotMemoized(RunStats())
    store = Store(directory, signing=signing.from_environment())
    atexit.register(_save_hits, store)
    return Memoized(store, RunStats(), Path.cwd())


def _save_hits(store: Store) -> None:
    """Outside pytest: write the hits counted in this process to the index at exit."""
    with contextlib.suppress(OSError):
        store.flush()
    store.close()


@overload
def cache(function: F) -> F: ...


@overload
def cache(
    *,
    ignore: Iterable[str] = (),
    version: object = None,
    compress: object = None,
    mmap: bool = False,
    max_age: float | str | None = None,
) -> Callable[[F], F]: ...


def cache(
    function: Any = None,
    *,
    ignore: Iterable[str] = (),
    version: object = None,
    compress: object = None,
    mmap: bool = False,
    max_age: float | str | None = None,
) -> Any:
    """Memoize ``function`` in the pytest-memo store.

    ``ignore`` names arguments left out of the key (a verbosity flag, a logger);
    ``version`` invalidates by hand; ``compress``, ``mmap`` and ``max_age`` are as for
    fixtures.
    """
    ignored = frozenset(ignore)
    seconds = parse_age(max_age, "pytest_memo.cache")

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        unknown = ignored - set(signature.parameters)
        if unknown:
            raise TypeError(
                f"cache(ignore=...) names {', '.join(sorted(unknown))}, which "
                f"{function.__qualname__} does not take"
            )
        identity = f"{function.__module__}:{function.__qualname__}"
        environment_names: list[str] | None = None

        def lookup(
            fingerprints: CodeFingerprints, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Lookup:
            nonlocal environment_names
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in bound.arguments.items() if k not in ignored}
            # As a fixture's parameters: by content and in order, and the project's
            # functions and classes in them (a callback, an instance) by their code.
            digest = fingerprints.data_digest(arguments)
            if environment_names is None:
                environment_names = reads.environment_names(
                    function, fingerprints.module_in_project
                )
            environment = {name: hash(os.environ.get(name)) for name in environment_names}

            def parts() -> explain.Parts:
                found = explain.code_parts(fingerprints, function)
                found["version"] = [hash(version), explain.readable(version), None]
                for name, value in environment.items():
                    found[f"env:{name}"] = [value, None, None]
                found["python"] = [PYTHON, PYTHON, None]
                shown = ", ".join(f"{k}={reprlib.repr(v)}" for k, v in arguments.items())
                found["param"] = [digest, explain.readable(shown, 40), None]
                return found

            return Lookup(
                key=combine(
                    identity=identity,
                    code=fingerprints.of(function),
                    arguments=digest,
                    version=hash(version),
                    **({"environment": environment} if environment else {}),
                ),
                name=identity,
                what=f"function {identity}",
                slot=combine(identity=identity, arguments=digest),
                source=identity,
                mmap=mmap,
                compress=compress,
                parts=parts,
                max_age=seconds,
                where=code_location(function),
            )

        @functools.wraps(function)
        def memoized(*args: Any, **kwargs: Any) -> Any:
            engine, fingerprints = _current()
            return engine.get_or_compute(
                lambda: function(*args, **kwargs), lambda: lookup(fingerprints, args, kwargs)
            )

        def clear() -> int:
            """Remove this function's stored values; returns how many were removed."""
            engine, _ = _current()
            store = engine.store
            return 0 if store is None else store.clear(identity)

        def check_call_in_cache(*args: Any, **kwargs: Any) -> bool:
            """Whether a call with these arguments would load a stored value."""
            engine, fingerprints = _current()
            return engine.contains(lookup(fingerprints, args, kwargs))

        memoized.clear = clear  # type: ignore[attr-defined]
        memoized.check_call_in_cache = check_call_in_cache  # type: ignore[attr-defined]
        return memoized  # type: ignore[return-value]

    return decorate(function) if function is not None else decorate
