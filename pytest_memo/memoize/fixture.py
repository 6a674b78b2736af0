"""Memoizing pytest fixtures: keys from a fixture request, the store lookup, single flight.

The plugin's ``pytest_fixture_setup`` wrapper hands each memoized fixture to
:meth:`FixtureMemo.setup`, a generator that yields exactly once, where pytest runs its own
setup.  On a hit, the fixture's function is swapped for one that returns the stored value,
so pytest caches, scopes and tears down the value exactly as if it had been computed.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_memo.core.hashing import UnhashableError, hash
from pytest_memo.core.inspection import (
    FIXTURE_ATTRIBUTES,
    REQUESTING_TEST_ATTRIBUTES,
    names,
    reads_requesting_test,
    request_escapes,
    setting_names,
    string_constants,
)
from pytest_memo.memoize import explain, reads
from pytest_memo.memoize.engine import Lookup, Memoized, NotMemoized, code_location, warn
from pytest_memo.memoize.keys import PYTHON, CodeFingerprints, combine, files_digest
from pytest_memo.memoize.marker import MemoOptions, fixture_options
from pytest_memo.memoize.stats import RunStats
from pytest_memo.pytest_compat import PYTEST_PER_RUN_FIXTURES, active_fixturedef
from pytest_memo.store.local import Store

__all__ = ["FixtureMemo"]


@dataclass
class Settings:
    rootdir: Path
    store: Store | None  # None: --memo-off
    run: str  # the run's identity, made in the main process and handed to its workers
    refresh: bool  # --memo-refresh: entries that other runs wrote are recomputed
    by_name: frozenset[str]  # the memo_fixtures ini option
    project: str = ""  # the project's identity, recorded in its entries (--memo-prune)


class FixtureMemo:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = RunStats()
        self.engine: Memoized | NotMemoized = (
            NotMemoized(self.stats)
            if settings.store is None
            else Memoized(settings.store, self.stats, settings.rootdir, settings.project)
        )
        self.pruned: int | None = None  # entries removed by --memo-prune
        self.removed: list[str] = []  # what --memo-clear and --memo-max-size removed
        self.fingerprints = CodeFingerprints(settings.rootdir)
        self._keys: dict[object, str] = {}  # FixtureDef -> key of its current value
        self._environment: dict[object, list[str]] = {}  # function -> variables it reads

    @property
    def store(self) -> Store | None:
        return self.engine.store

    def store_unusable(self) -> None:
        """The store cannot be used and that was already reported: compute normally."""
        self.engine.unusable()

    def options_for(self, fixturedef: Any) -> MemoOptions | None:
        if self.settings.store is None:
            return None
        return fixture_options(fixturedef, self.settings.by_name)

    # -- setup ----------------------------------------------------------------

    def refusals(self, fixturedefs: Any) -> list[str]:
        """Why memoized fixtures among ``fixturedefs`` (a test's, at collection) cannot be
        memoized: the test gets these errors instead of running."""
        found = []
        for fixturedef in fixturedefs:
            options = self.options_for(fixturedef)
            message = None if options is None else refusal(fixturedef, options)
            if message is not None:
                found.append(message)
        return found

    def setup(
        self, fixturedef: Any, request: Any, options: MemoOptions
    ) -> Generator[None, Any, Any]:
        # Until this setup stores a key, dependents key this fixture by its value: a key
        # left from an earlier setup (another test, another parameter) would name a value
        # that this one, computed unmemoized, is not.
        self._keys.pop(fixturedef, None)
        message = refusal(fixturedef, options)  # for fixtures requested by getfixturevalue
        if message is None:
            try:
                return (yield from self._setup(fixturedef, request, options))
            except _Refused as refused:
                message = str(refused)
        # Failing inside pytest's own setup, which caches the error for the fixture's scope
        # and reports it alone: raised from this wrapper, before pytest sets the fixture up,
        # it would leave the fixture half set up and every later test erroring inside pytest.
        return (yield from _serve(fixturedef, _failing(message)))

    def _setup(
        self, fixturedef: Any, request: Any, options: MemoOptions
    ) -> Generator[None, Any, Any]:
        function = getattr(fixturedef.func, "__func__", fixturedef.func)
        if "getfixturevalue" in names(function.__code__):
            warn(
                f"fixture {fixturedef.argname!r} calls request.getfixturevalue(): the values "
                "it gets that way cannot enter its key, so it is computed, not memoized; "
                "request those fixtures as arguments instead",
                code_location(function),
            )
            return (yield)
        try:
            key, slot, parts = self._key(fixturedef, request, options)
        except _NotKeyable as problem:
            warn(
                f"fixture {fixturedef.argname!r} {problem}, which cannot enter its key, so it "
                "is computed, not memoized; read what it needs in a fixture that is not "
                "memoized and pass plain values to this one (as arguments or parameters)",
                code_location(function),
            )
            return (yield)
        self._keys[fixturedef] = key
        self.stats.used_slots.add(slot)
        lookup = Lookup(
            key=key,
            name=fixturedef.argname,
            what=f"fixture {fixturedef.argname!r}",
            slot=slot,
            source=self._source(fixturedef.func),
            mmap=options.mmap,
            compress=options.compress,
            run=self.settings.run,
            refresh=self.settings.refresh,
            parts=parts,
            max_age=options.max_age,
            where=code_location(fixturedef.func),
        )
        with self.engine.claim(lookup) as claim:
            if claim.entry is not None:
                return (yield from _serve(fixturedef, _returning(claim.entry.value)))
            value = yield  # pytest sets the fixture up: it computes
            claim.keep(value)
            return value

    # -- keys -----------------------------------------------------------------

    def _key(
        self, fixturedef: Any, request: Any, options: MemoOptions
    ) -> tuple[str, str, Callable[[], explain.Parts]]:
        function = getattr(fixturedef.func, "__func__", fixturedef.func)
        # The source file (relative to the rootdir) tells apart same-named conftest modules.
        identity = f"{self._source(function)}:{function.__module__}:{function.__qualname__}"
        param = self._param(fixturedef, request)
        if "request" in fixturedef.argnames and reads_requesting_test(function.__code__):
            # request.node, request.module, ...: the value may depend on the requesting
            # test, and on what the code reads of it (marks, parameters, attributes).
            param = hash((param, request.node.nodeid, self._test_read(function, request)))
        instance = _bound_instance(fixturedef, request)
        if instance is not None:
            # A fixture method's self is the test's instance: what setup_method or another
            # fixture set on it (self.n) is data the value depends on.
            param = hash((param, self._instance_read(instance)))
        options_read = _options_read(function, request.config, fixturedef.argnames)
        dependencies = {
            name: self._dependency(fixturedef, request, name)
            for name in fixturedef.argnames
            if name not in ("request", CONFIG_FIXTURE) and name not in options.ignore
        }
        files = None
        if options.depends:
            _refuse_absolute_patterns(fixturedef.argname, options.depends, self.settings.rootdir)
            files, unmatched = files_digest(self.settings.rootdir, options.depends)
            for pattern in unmatched:
                warn(
                    f"depends pattern {pattern!r} of fixture {fixturedef.argname!r} matches "
                    "no file",
                    code_location(function),
                )
        environment = self._environment_read(function)
        key = combine(
            identity=identity,
            code=self.fingerprints.of(function),
            param=param,
            dependencies=dependencies,
            files=files,
            version=hash(options.version),
            command_line=options_read,
            **({"environment": environment} if environment else {}),
        )

        def parts() -> explain.Parts:
            found = explain.code_parts(self.fingerprints, function)
            for name, dependency in dependencies.items():
                found[f"dependency:{name}"] = [hash(dependency), dependency[0], None]
            for pattern in options.depends:
                for path in sorted(self.settings.rootdir.glob(pattern)):
                    if path.is_file():
                        relative = path.relative_to(self.settings.rootdir).as_posix()
                        found[f"file:{relative}"] = [reads.file_digest(path), None, None]
            found["version"] = [hash(options.version), explain.readable(options.version), None]
            for name, digest in (options_read or {}).items():
                kind, _, text = name.partition(":")
                getter = request.config.getoption if kind == "option" else request.config.getini
                found[name] = [digest, explain.readable(getter(text)), None]
            for name, digest in environment.items():
                found[f"env:{name}"] = [digest, None, None]
            found["python"] = [PYTHON, PYTHON, None]
            if hasattr(request, "param"):
                found["param"] = [param, explain.readable(request.param, 40), None]
            return found

        return key, combine(identity=identity, param=param), parts

    def _environment_read(self, function: Any) -> dict[str, str]:
        """The environment variables the fixture's code (and the project code it calls)
        reads by name, with digests of their values in this run."""
        variables = self._environment.get(function)
        if variables is None:
            variables = self._environment[function] = reads.environment_names(
                function, self.fingerprints.module_in_project
            )
        return {name: hash(os.environ.get(name)) for name in variables}

    def _test_read(self, function: Any, request: Any) -> list[Any]:
        """Digests of what the code may read of the requesting test: its marks, its
        parameters, and the attributes of the test's node, module, class, instance and
        function that the code names.  Raises :class:`_NotKeyable` when it cannot tell."""
        code = function.__code__
        if request_escapes(code):
            raise _NotKeyable("hands request to other code, which may read the requesting test")
        named = names(code)
        if "applymarker" in named or "add_marker" in named:
            raise _NotKeyable("marks the requesting test (a side effect a stored value skips)")
        node = request.node
        read: list[Any] = []
        try:
            marks = [(mark.name, mark.args, mark.kwargs) for mark in node.iter_markers()]
            read.append(("marks", self.fingerprints.data_digest(marks)))
            callspec = getattr(node, "callspec", None)
            if callspec is not None:
                read.append(("params", self.fingerprints.data_digest(dict(callspec.params))))
        except UnhashableError as error:
            raise _NotKeyable(f"reads the marks or parameters of the test ({error})") from None
        for where in ("node", "module", "cls", "instance", "function"):
            if where not in named:
                continue
            try:
                owner = node if where == "node" else getattr(request, where)
            except Exception:  # e.g. request.module of a session-scoped fixture
                continue
            if owner is None:
                continue
            for name in named:
                if name in REQUEST_ATTRIBUTES:
                    continue  # named for request.<name>: read as such above
                try:
                    value = getattr(owner, name)
                except Exception:  # not its attribute, or a property that fails
                    continue
                if inspect.ismethod(value) and value.__self__ is owner:
                    if where == "node" and name in NODE_QUERIES:
                        continue  # answered from the marks and parameters above
                    raise _NotKeyable(f"calls request.{where}.{name}()")
                try:
                    read.append((where, name, self.fingerprints.data_digest(value)))
                except UnhashableError as error:
                    raise _NotKeyable(f"reads request.{where}.{name} ({error})") from None
        return read

    def _instance_read(self, instance: object) -> list[Any]:
        """Digests of the attributes of the test's instance, which a fixture method reads
        through ``self``, directly or through the methods it calls."""
        read = []
        for name, value in sorted(getattr(instance, "__dict__", {}).items()):
            try:
                read.append((name, self.fingerprints.data_digest(value)))
            except UnhashableError as error:
                raise _NotKeyable(
                    f"runs with the test's instance as self, and self.{name} ({error})"
                ) from None
        return read

    def _param(self, fixturedef: Any, request: Any) -> str | None:
        if not hasattr(request, "param"):
            return None
        try:
            return self.fingerprints.data_digest(request.param)
        except UnhashableError as error:
            raise _Refused(
                f"pytest-memo: the parameter of fixture {fixturedef.argname!r} cannot be "
                f"hashed ({error}); use parameters that are plain data"
            ) from None

    def _dependency(self, fixturedef: Any, request: Any, name: str) -> Any:
        dependency = active_fixturedef(request, name)
        key = self._keys.get(dependency)
        if key is not None and isinstance(self.engine, Memoized):
            # Early cutoff: keyed on the upstream value's content, not on its key, so an
            # upstream edit that gives the same value does not recompute this fixture.
            try:
                return (
                    "memo",
                    self.engine.content_digest(
                        key, lambda: self.fingerprints.data_digest(request.getfixturevalue(name))
                    ),
                )
            except UnhashableError:
                return ("memo-key", key)
        if key is not None:
            return ("memo", key)
        try:
            return ("value", self.fingerprints.data_digest(request.getfixturevalue(name)))
        except UnhashableError as error:
            raise _Refused(
                f"pytest-memo: fixture {fixturedef.argname!r} depends on {name!r}, whose "
                f"value cannot be hashed into its key ({error}): {_ignore_hint(name)}"
            ) from None

    def _source(self, function: Any) -> str:
        try:
            path = Path(inspect.getfile(function)).resolve()
            return path.relative_to(self.settings.rootdir.resolve()).as_posix()
        except (TypeError, ValueError):
            return str(getattr(function, "__module__", "?"))


# pytest's config as a fixture: what the code reads of it enters the key, as of request.config.
CONFIG_FIXTURE = "pytestconfig"
# Methods of a test's node whose answers depend only on its marks and parameters.
NODE_QUERIES = frozenset({"get_closest_marker", "iter_markers", "iter_markers_with_node"})
REQUEST_ATTRIBUTES = REQUESTING_TEST_ATTRIBUTES | FIXTURE_ATTRIBUTES


class _NotKeyable(Exception):
    """What the fixture reads of the requesting test cannot enter its key (the message
    completes "fixture 'name' ...")."""


class _Refused(Exception):
    """The fixture cannot be memoized: the message says why and what to do."""


def _bound_instance(fixturedef: Any, request: Any) -> object | None:
    """The test's instance when the fixture is a method of its class: pytest binds the
    method to ``request.instance`` (see ``resolve_fixture_function``)."""
    bound_to = getattr(fixturedef.func, "__self__", None)
    if bound_to is None or isinstance(bound_to, type):
        return None
    try:
        instance: object = request.instance
    except Exception:
        return None
    if instance is None or not isinstance(instance, type(bound_to)):
        return None
    return instance


def _returning(value: Any) -> Callable[..., Any]:
    def stored_value(*args: Any, **kwargs: Any) -> Any:
        return value

    return stored_value


def _failing(message: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        pytest.fail(message, pytrace=False)

    return refused


def _serve(fixturedef: Any, function: Callable[..., Any]) -> Generator[None, Any, Any]:
    """Let pytest set the fixture up by calling ``function`` instead of the fixture."""
    original = fixturedef.func
    fixturedef.func = function
    try:
        return (yield)
    finally:
        fixturedef.func = original


def _options_read(
    function: Any, config: pytest.Config, argnames: Any = ()
) -> dict[str, str] | None:
    """Command-line options and ini values the code names (``request.config.getoption
    ("size")``, ``pytestconfig.getini("mode")``), with the values they have in this run:
    they enter the key."""
    candidates = setting_names(function.__code__)
    if candidates is None and CONFIG_FIXTURE in argnames:
        candidates = sorted(string_constants(function.__code__))
    if candidates is None:
        return None
    if "option" in names(function.__code__):  # request.config.option.size
        candidates = sorted({*candidates, *names(function.__code__)})
    read = {}
    for text in candidates:
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


def _refuse_absolute_patterns(name: str, patterns: Any, rootdir: Path) -> None:
    for pattern in patterns:
        if Path(pattern).is_absolute():
            pytest.fail(
                f"pytest-memo: depends pattern {pattern!r} of fixture {name!r} is an absolute "
                f"path; patterns are relative to the rootdir ({rootdir}), so that keys are the "
                "same in every checkout: write it relative to the rootdir",
                pytrace=False,
            )


def _ignore_hint(name: str) -> str:
    return (
        f"add ignore=[{name!r}] to its memo mark if the value does not depend on it, "
        "or memoize a fixture that does not use it"
    )


def refusal(fixturedef: Any, options: MemoOptions) -> str | None:
    """Why a memoized fixture can never be memoized, seen from its definition alone:
    a yield or async fixture, or one that takes a per-run built-in (``tmp_path``)."""
    function = fixturedef.func
    name = fixturedef.argname
    reason = None
    if inspect.isgeneratorfunction(function):
        reason = "is a yield fixture, and its teardown cannot be replayed from the store"
    elif inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        reason = "is an async fixture, whose value only exists inside an event loop"
    if reason is not None:
        return (
            f"pytest-memo: fixture {name!r} {reason}. Move the expensive part into its own "
            "(plain, synchronous) fixture that returns the data and mark that one with "
            "@pytest.mark.memo; keep this fixture unmemoized, taking the data as an argument."
        )
    for argument in fixturedef.argnames:
        if argument == CONFIG_FIXTURE:
            continue  # the run's config: the options and ini values it reads enter the key
        if argument in PYTEST_PER_RUN_FIXTURES and argument not in options.ignore:
            return (
                f"pytest-memo: fixture {name!r} depends on {argument!r}, which is different "
                f"on every run, so it could never be loaded from the store: "
                f"{_ignore_hint(argument)}"
            )
    return None
