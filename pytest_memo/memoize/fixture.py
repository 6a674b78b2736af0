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
from pytest_memo.core.inspection import names, reads_requesting_test, setting_names
from pytest_memo.memoize import explain, reads
from pytest_memo.memoize.engine import Lookup, Memoized, NotMemoized, code_location, warn
from pytest_memo.memoize.keys import PYTHON, CodeFingerprints, combine, files_digest
from pytest_memo.memoize.marker import MemoOptions, options_of
from pytest_memo.memoize.stats import RunStats
from pytest_memo.pytest_compat import PYTEST_PER_RUN_FIXTURES, active_fixturedef
from pytest_memo.store.local import Store

__all__ = ["FixtureMemo"]


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
        self.engine: Memoized | NotMemoized = (
            NotMemoized(self.stats)
            if settings.store is None
            else Memoized(settings.store, self.stats, settings.rootdir)
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
        if "getfixturevalue" in names(function.__code__):
            warn(
                f"fixture {fixturedef.argname!r} calls request.getfixturevalue(): the values "
                "it gets that way cannot enter its key, so it is computed, not memoized; "
                "request those fixtures as arguments instead",
                code_location(function),
            )
            return (yield)
        key, slot, parts = self._key(fixturedef, request, options)
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
            stale_before=self.settings.run_started if self.settings.refresh else None,
            parts=parts,
            max_age=options.max_age,
            where=code_location(fixturedef.func),
        )
        with self.engine.claim(lookup) as claim:
            if claim.entry is not None:
                return (yield from _serve(fixturedef, claim.entry.value))
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
        names = self._environment.get(function)
        if names is None:
            names = self._environment[function] = reads.environment_names(
                function, self.fingerprints.module_in_project
            )
        return {name: hash(os.environ.get(name)) for name in names}

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


def _options_read(function: Any, config: pytest.Config) -> dict[str, str] | None:
    """Command-line options and ini values the code names (``request.config.getoption
    ("size")``), with the values they have in this run: they enter the key."""
    candidates = setting_names(function.__code__)
    if candidates is None:
        return None
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
