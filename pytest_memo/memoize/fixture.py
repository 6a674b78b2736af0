"""Memoizing pytest fixtures: keys from a fixture request, the store lookup, single flight.

The plugin's ``pytest_fixture_setup`` wrapper hands each memoized fixture to
:meth:`FixtureMemo.setup`, a generator that yields exactly once, where pytest runs its own
setup.  On a hit, the fixture's function is swapped for one that returns the stored value,
so pytest caches, scopes and tears down the value exactly as if it had been computed.
"""

from __future__ import annotations

import dis
import functools
import inspect
import time
import types
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_memo.core.errors import CorruptFileError, MemoWarning
from pytest_memo.core.hashing import UnhashableError, code_objects, global_names, hash
from pytest_memo.memoize.keys import CodeFingerprints, combine, files_digest
from pytest_memo.memoize.marker import MemoOptions, options_of
from pytest_memo.memoize.stats import RunStats
from pytest_memo.pytest_compat import PYTEST_PER_RUN_FIXTURES, active_fixturedef
from pytest_memo.store.local import Entry, EntryInfo, Store

__all__ = ["FixtureMemo", "MemoWarning"]


@dataclass
class Settings:
    rootdir: Path
    store: Store | None  # None: --memo-off
    run_started: float  # in the main process, for all workers of a run
    refresh: bool  # --memo-refresh: entries written before the run started are recomputed
    by_name: frozenset[str]  # the memo_fixtures ini option


class FixtureMemo:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = RunStats()
        self.pruned: int | None = None  # entries removed by --memo-prune
        self.fingerprints = CodeFingerprints(settings.rootdir)
        self._keys: dict[object, str] = {}  # FixtureDef -> key of its current value
        self._store_broken = False
        self._store_prepared = False

    @property
    def store(self) -> Store | None:
        return None if self._store_broken else self.settings.store

    def store_unusable(self) -> None:
        """The store cannot be used and that was already reported: compute normally."""
        self._store_broken = True

    def _prepared_store(self) -> Store | None:
        # Checked once per process before the first lookup, so that a store that cannot
        # be created gives one warning, not one per failing read, lock and write.
        store = self.store
        if store is not None and not self._store_prepared:
            self._store_prepared = True
            try:
                store.prepare()
            except OSError as error:
                self._broken(error)
                return None
        return store

    def options_for(self, fixturedef: Any) -> MemoOptions | None:
        if self.settings.store is None:
            return None
        options = options_of(fixturedef.func)
        if options is None and fixturedef.argname in self.settings.by_name:
            return MemoOptions()
        return options

    # -- setup ----------------------------------------------------------------

    def setup(
        self, fixturedef: Any, request: Any, options: MemoOptions
    ) -> Generator[None, Any, Any]:
        _refuse_unsupported(fixturedef)
        function = getattr(fixturedef.func, "__func__", fixturedef.func)
        if "getfixturevalue" in _names(function.__code__):
            _warn(
                f"fixture {fixturedef.argname!r} calls request.getfixturevalue(): the values "
                "it gets that way cannot enter its key, so it is computed, not memoized; "
                "request those fixtures as arguments instead"
            )
            return (yield)
        key, slot = self._key(fixturedef, request, options)
        self._keys[fixturedef] = key
        self.stats.used_keys.add(key)
        self.stats.used_slots.add(slot)
        store, stats = self._prepared_store(), self.stats.of(fixturedef.argname)
        if store is None:
            return (yield)
        entry = self._lookup(store, key, fixturedef, options)
        if entry is None:
            lock = store.lock(key)
            try:
                lock.acquire()
            except OSError as error:  # the lock file cannot be created: read-only store
                self._broken(error)
                return (yield)
            try:
                entry = self._lookup(store, key, fixturedef, options)
                if entry is None:
                    return (yield from self._compute(store, key, slot, fixturedef, options))
            finally:
                lock.release()
        stats.hits += 1
        stats.seconds_saved += entry.info.seconds
        try:
            store.note_hit(entry)
        except OSError as error:
            self._broken(error)
        return (yield from _serve(fixturedef, entry.value))

    def _compute(
        self, store: Store, key: str, slot: str, fixturedef: Any, options: MemoOptions
    ) -> Generator[None, Any, Any]:
        started = time.perf_counter()
        value = yield
        seconds = time.perf_counter() - started
        stats = self.stats.of(fixturedef.argname)
        stats.misses += 1
        stats.seconds_computed += seconds
        info = EntryInfo(
            fixture=fixturedef.argname,
            source=self._source(fixturedef.func),
            slot=slot,
            seconds=seconds,
            created=time.time(),
        )
        self._save(store, key, info, value, options, fixturedef.argname)
        return value

    def _save(
        self, store: Store, key: str, info: EntryInfo, value: Any, options: MemoOptions, name: str
    ) -> None:
        try:
            invalidated = store.has_other_in_slot(info.slot, key)
            store.write(key, info, value, compress=options.compress)
        except OSError as error:
            self._broken(error)
            return
        except Exception as error:  # pickling runs user code: any error is possible
            _warn(
                f"the value of fixture {name!r} could not be stored ({type(error).__name__}: "
                f"{error}); the test uses the computed value and it is not memoized"
            )
            return
        if invalidated:
            self.stats.of(name).invalidated += 1

    def _lookup(
        self, store: Store, key: str, fixturedef: Any, options: MemoOptions
    ) -> Entry | None:
        settings = self.settings
        if settings.refresh and store.created_before(key, settings.run_started):
            return None
        try:
            entry = store.read(key, mmap=options.mmap)
        except CorruptFileError as error:
            _warn(
                f"removed a damaged entry of fixture {fixturedef.argname!r} and recomputed it: "
                f"{error}"
            )
            store.remove(key)
            return None
        except OSError as error:
            _warn(f"cannot read the store entry of fixture {fixturedef.argname!r}: {error}")
            return None
        except Exception as error:  # unpickling runs user code (a class that changed shape)
            _warn(
                f"removed an entry of fixture {fixturedef.argname!r} that no longer loads "
                f"({type(error).__name__}: {error}) and recomputed it"
            )
            store.remove(key)
            return None
        if entry is not None and entry.info.fixture != fixturedef.argname:
            return None  # not ours: never serve another fixture's value
        return entry

    def _broken(self, error: OSError) -> None:
        if not self._store_broken:
            _warn(
                f"cannot write to the store in {self.settings.store and self.settings.store.root} "
                f"({error}); fixtures are computed normally for the rest of this run"
            )
        self._store_broken = True

    # -- keys -----------------------------------------------------------------

    def _key(self, fixturedef: Any, request: Any, options: MemoOptions) -> tuple[str, str]:
        function = getattr(fixturedef.func, "__func__", fixturedef.func)
        # The source file (relative to the rootdir) tells apart same-named conftest modules.
        identity = f"{self._source(function)}:{function.__module__}:{function.__qualname__}"
        param = self._param(fixturedef, request)
        if "request" in fixturedef.argnames and _reads_requesting_test(function):
            # request.node, request.function, ... or request handed to other code: the
            # value may depend on the requesting test.
            param = hash((param, request.node.nodeid))
        options_read = _options_read(function, request.config)
        dependencies = {
            name: self._dependency(fixturedef, request, name)
            for name in fixturedef.argnames
            if name != "request" and name not in options.ignore
        }
        files = None
        if options.depends:
            _refuse_absolute_patterns(fixturedef.argname, options.depends, self.settings.rootdir)
            files, unmatched = files_digest(self.settings.rootdir, options.depends)
            for pattern in unmatched:
                _warn(
                    f"depends pattern {pattern!r} of fixture {fixturedef.argname!r} matches no file"
                )
        key = combine(
            identity=identity,
            code=self.fingerprints.of(function),
            param=param,
            dependencies=dependencies,
            files=files,
            version=hash(options.version),
            command_line=options_read,
        )
        return key, combine(identity=identity, param=param)

    def _param(self, fixturedef: Any, request: Any) -> str | None:
        if not hasattr(request, "param"):
            return None
        try:
            return self.fingerprints.data_digest(request.param)
        except UnhashableError as error:
            problem = str(error)
        # Failing outside the except clause: the report shows our message alone, not a
        # "During handling of the above exception" chain behind it.
        pytest.fail(
            f"pytest-memo: the parameter of fixture {fixturedef.argname!r} cannot be hashed "
            f"({problem}); use parameters that are plain data",
            pytrace=False,
        )

    def _dependency(self, fixturedef: Any, request: Any, name: str) -> Any:
        dependency = active_fixturedef(request, name)
        key = self._keys.get(dependency)
        if key is not None:
            return ("memo", key)
        hint = (
            f"add ignore=[{name!r}] to its memo mark if the value does not depend on it, "
            "or memoize a fixture that does not use it"
        )
        if name in PYTEST_PER_RUN_FIXTURES:
            pytest.fail(
                f"pytest-memo: fixture {fixturedef.argname!r} depends on {name!r}, which is "
                f"different on every run, so it could never be loaded from the store: {hint}",
                pytrace=False,
            )
        try:
            return ("value", self.fingerprints.data_digest(request.getfixturevalue(name)))
        except UnhashableError as error:
            problem = str(error)
        pytest.fail(  # outside the except clause, as in _param
            f"pytest-memo: fixture {fixturedef.argname!r} depends on {name!r}, whose value "
            f"cannot be hashed into its key ({problem}): {hint}",
            pytrace=False,
        )

    def _source(self, function: Any) -> str:
        try:
            path = Path(inspect.getfile(function)).resolve()
            return path.relative_to(self.settings.rootdir.resolve()).as_posix()
        except (TypeError, ValueError):
            return str(getattr(function, "__module__", "?"))


def _serve(fixturedef: Any, value: Any) -> Generator[None, Any, Any]:
    """Let pytest set the fixture up with ``value`` instead of calling the fixture."""

    def stored_value(*args: Any, **kwargs: Any) -> Any:
        return value

    original = fixturedef.func
    fixturedef.func = stored_value
    try:
        return (yield)
    finally:
        fixturedef.func = original


# Attributes of ``request`` that describe the requesting test rather than the fixture.
REQUESTING_TEST_ATTRIBUTES = frozenset(
    {
        "node",
        "function",
        "cls",
        "instance",
        "module",
        "path",
        "fspath",
        "keywords",
        "getfixturevalue",
        "applymarker",
        "_pyfuncitem",
    }
)


# Attributes of ``request`` that do not depend on the requesting test.
FIXTURE_ATTRIBUTES = frozenset(
    {"param", "param_index", "config", "fixturename", "scope", "addfinalizer"}
)
# Instructions that only prepare a variable for a nested function (checked on its own).
CELL_INSTRUCTIONS = frozenset({"MAKE_CELL", "LOAD_CLOSURE", "COPY_FREE_VARS"})


# The bytecode checks below run for every test a function-scoped fixture serves: each is
# computed once per fixture code object.
_names = functools.cache(global_names)


def _reads_requesting_test(function: Any) -> bool:
    code = function.__code__
    return not REQUESTING_TEST_ATTRIBUTES.isdisjoint(_names(code)) or _request_passed_on(code)


@functools.cache
def _request_passed_on(code: types.CodeType) -> bool:
    """Whether the code does anything with ``request`` other than read one of
    :data:`FIXTURE_ATTRIBUTES`: handing it to a helper, which may read the test's node."""
    return any(_passes_request_on(nested) for nested in code_objects(code))


def _passes_request_on(code: types.CodeType) -> bool:
    instructions = list(dis.get_instructions(code))
    for position, instruction in enumerate(instructions):
        argument = instruction.argval
        mentioned = argument if isinstance(argument, tuple) else (argument,)
        if "request" not in mentioned or instruction.opname in CELL_INSTRUCTIONS:
            continue
        following = instructions[position + 1] if position + 1 < len(instructions) else None
        only_reads_an_attribute = (
            instruction.opname.startswith(("LOAD_FAST", "LOAD_DEREF", "STORE_FAST_LOAD_FAST"))
            and mentioned[-1] == "request"
            and following is not None
            and following.opname in ("LOAD_ATTR", "LOAD_METHOD")
            and following.argval in FIXTURE_ATTRIBUTES
        )
        if not only_reads_an_attribute:
            return True
    return False


def _options_read(function: Any, config: pytest.Config) -> dict[str, str] | None:
    """Command-line options and ini values the code names (``request.config.getoption
    ("size")``), with the values they have in this run: they enter the key."""
    code = function.__code__
    if "config" not in _names(code):
        return None
    read = {}
    for text in sorted(_string_constants(code)):
        for kind, lookup in (("option", config.getoption), ("ini", config.getini)):
            try:
                value = lookup(text)
            except (ValueError, AttributeError, KeyError):
                continue
            try:
                read[f"{kind}:{text}"] = hash(value)
            except UnhashableError:
                read[f"{kind}:{text}"] = repr(value)
    return read


@functools.cache
def _string_constants(code: types.CodeType) -> frozenset[str]:
    return frozenset(
        const
        for nested in code_objects(code)
        for const in nested.co_consts
        if isinstance(const, str)
    )


def _refuse_absolute_patterns(name: str, patterns: Any, rootdir: Path) -> None:
    for pattern in patterns:
        if Path(pattern).is_absolute():
            pytest.fail(
                f"pytest-memo: depends pattern {pattern!r} of fixture {name!r} is an absolute "
                f"path; patterns are relative to the rootdir ({rootdir}), so that keys are the "
                "same in every checkout: write it relative to the rootdir",
                pytrace=False,
            )


def _refuse_unsupported(fixturedef: Any) -> None:
    function = fixturedef.func
    reason = None
    if inspect.isgeneratorfunction(function):
        reason = "is a yield fixture, and its teardown cannot be replayed from the store"
    elif inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        reason = "is an async fixture, whose value only exists inside an event loop"
    if reason is not None:
        pytest.fail(
            f"pytest-memo: fixture {fixturedef.argname!r} {reason}. Move the expensive part "
            "into its own (plain, synchronous) fixture that returns the data and mark that "
            "one with @pytest.mark.memo; keep this fixture unmemoized, taking the data as "
            "an argument.",
            pytrace=False,
        )


def _warn(message: str) -> None:
    warnings.warn(MemoWarning(f"pytest-memo: {message}"), stacklevel=2)
