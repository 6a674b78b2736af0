"""``pytest_memo.cache``: memoize a plain function in the store, as ``joblib.Memory.cache`` does.

Inside a pytest run the function uses the run's store (``--memo-dir``; nothing is stored
with ``--memo-off``); outside pytest it uses ``$PYTEST_MEMO_DIR`` or ``.pytest_memo`` in
the current directory.  Keys follow the same rules as memoized fixtures: the function's
identity and code (and the project code it calls), its arguments, ``version``.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

from pytest_memo.core.errors import CorruptFileError
from pytest_memo.core.hashing import hash
from pytest_memo.memoize.keys import CodeFingerprints, combine
from pytest_memo.store.local import Entry, EntryInfo, Store, secret_from_environment

__all__ = ["cache", "use_store"]

F = TypeVar("F", bound=Callable[..., Any])

_active: dict[str, Any] = {"store": None, "rootdir": None, "off": False}
# Keys of cached calls made in this process, so --memo-prune keeps their entries.
used_keys: set[str] = set()


def use_store(store: Store | None, rootdir: Path, off: bool = False) -> None:
    """Called by the plugin: cached functions use the run's store while pytest runs."""
    _active.update(store=store, rootdir=rootdir, off=off, fingerprints=CodeFingerprints(rootdir))


def _current() -> tuple[Store | None, CodeFingerprints]:
    if _active["store"] is None and not _active["off"]:
        root = Path(os.environ.get("PYTEST_MEMO_DIR", ".pytest_memo")).resolve()
        use_store(Store(root, secret=secret_from_environment()), Path.cwd())
    return _active["store"], _active["fingerprints"]


@overload
def cache(function: F) -> F: ...


@overload
def cache(
    *,
    ignore: Iterable[str] = (),
    version: object = None,
    compress: object = None,
    mmap: bool = False,
) -> Callable[[F], F]: ...


def cache(
    function: Any = None,
    *,
    ignore: Iterable[str] = (),
    version: object = None,
    compress: object = None,
    mmap: bool = False,
) -> Any:
    """Memoize ``function`` in the pytest-memo store.

    ``ignore`` names arguments left out of the key (a verbosity flag, a logger);
    ``version`` invalidates by hand; ``compress`` and ``mmap`` are as for fixtures.
    """
    ignored = frozenset(ignore)

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        unknown = ignored - set(signature.parameters)
        if unknown:
            raise TypeError(
                f"cache(ignore=...) names {', '.join(sorted(unknown))}, which "
                f"{function.__qualname__} does not take"
            )
        identity = f"{function.__module__}:{function.__qualname__}"

        @functools.wraps(function)
        def memoized(*args: Any, **kwargs: Any) -> Any:
            store, fingerprints = _current()
            if store is None:
                return function(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = {k: v for k, v in bound.arguments.items() if k not in ignored}
            key = combine(
                identity=identity,
                code=fingerprints.of(function),
                arguments=hash(arguments, _active["rootdir"]),
                version=hash(version),
            )
            used_keys.add(key)
            return _get_or_compute(
                store, key, identity, lambda: function(*args, **kwargs), compress, mmap
            )

        return memoized  # type: ignore[return-value]

    return decorate(function) if function is not None else decorate


def _get_or_compute(
    store: Store, key: str, identity: str, compute: Callable[[], Any], compress: object, mmap: bool
) -> Any:
    lock = store.lock(key)
    try:
        store.prepare()
        entry = _read(store, key, mmap)
        if entry is None:
            lock.acquire()
    except OSError as error:
        warnings.warn(f"pytest-memo: store {store.root} is not usable ({error})", stacklevel=4)
        return compute()
    if entry is not None:
        return entry.value
    try:
        entry = _read(store, key, mmap)  # computed by another process while we waited
        if entry is not None:
            return entry.value
        started = time.perf_counter()
        value = compute()
        info = EntryInfo(
            fixture=identity,
            source=identity,
            slot=combine(identity=identity),
            seconds=time.perf_counter() - started,
            created=time.time(),
        )
        try:
            store.write(key, info, value, compress=compress)
        except Exception as error:  # pickling runs user code; OSError: store not writable
            warnings.warn(
                f"pytest-memo: the result of {identity} could not be stored "
                f"({type(error).__name__}: {error})",
                stacklevel=4,
            )
        return value
    finally:
        lock.release()


def _read(store: Store, key: str, mmap: bool) -> Entry | None:
    try:
        return store.read(key, mmap=mmap)
    except CorruptFileError as error:
        warnings.warn(f"pytest-memo: removed a damaged entry, recomputing: {error}", stacklevel=5)
        store.remove(key)
        return None
