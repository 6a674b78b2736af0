"""Cache keys: everything a memoized value depends on, reduced to one digest.

A key covers the function's identity (module and qualified name, never a path or a line
number) and its code, and, transitively, the code of the project's own functions and
classes it refers to.  Code outside the project (site-packages, the standard library)
counts through the version of the distribution it comes from.  Module-level data a
function reads counts by content.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import xxhash

from pytest_memo.core.hashing import UnhashableError, code_hash, content_hash, hash
from pytest_memo.core.inspection import global_names, imported_modules, owner_class

__all__ = ["CodeFingerprints", "combine", "files_digest"]

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def combine(**parts: Any) -> str:
    """The key for a set of named, already reduced parts (strings, numbers, tuples)."""
    from pytest_memo.core.serialize import FORMAT_VERSION  # here: it imports numpy

    return hash({"python": PYTHON, "format": FORMAT_VERSION, **parts})


def files_digest(rootdir: Path, patterns: Sequence[str]) -> tuple[str, list[str]]:
    """Digest of the files matching glob ``patterns`` under ``rootdir``, by path and content.

    Returns the digest and the patterns that matched no file.
    """
    digest = xxhash.xxh3_128()
    unmatched = []
    for pattern in patterns:
        matches = sorted(path for path in rootdir.glob(pattern) if path.is_file())
        if not matches:
            unmatched.append(pattern)
        for path in matches:
            relative = path.relative_to(rootdir).as_posix().encode()
            digest.update(len(relative).to_bytes(8, "little") + relative)
            with path.open("rb") as file:
                while block := file.read(1 << 20):
                    digest.update(block)
            digest.update(b"\0end")
    return str(digest.hexdigest()), unmatched


class CodeFingerprints:
    """Fingerprints of functions and classes, computed once per object per session."""

    def __init__(self, rootdir: Path) -> None:
        self.rootdir = rootdir.resolve()
        self._done: dict[int, tuple[object, str]] = {}
        self._active: set[int] = set()
        self._modules_active: set[str] = set()
        self._placeholders = 0  # recursion placeholders handed out so far
        self._project_modules: dict[str, bool] = {}
        self._distributions: dict[str, list[str]] | None = None

    def of(self, obj: Any) -> str:
        """Fingerprint of a function or class and of the project code it refers to."""
        known = self._done.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        if id(obj) in self._active:  # recursion: the outer call covers this object
            self._placeholders += 1
            return f"recursive:{_name(obj)}"
        self._active.add(id(obj))
        placeholders = self._placeholders
        try:
            digest = hash(self._parts(obj))
        finally:
            self._active.discard(id(obj))
        # A fingerprint that stands in for an object being fingerprinted further out is
        # complete only there: another fixture reaching this object first must not reuse it.
        if self._placeholders == placeholders:
            self._done[id(obj)] = (obj, digest)
        return digest

    def _parts(self, obj: Any) -> tuple[Any, ...]:
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None and wrapped is not obj:
            # A decorated function: the decorator's wrapper (its code, and the arguments
            # the decorator was given, in its closure) counts as well as the function.
            outer = self._function_parts(obj) if isinstance(obj, types.FunctionType) else None
            return ("wrapped", outer, self.of(wrapped))
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if isinstance(obj, type):
            return self._class_parts(obj)
        if isinstance(obj, types.FunctionType):
            return self._function_parts(obj)
        return ("object", _name(obj))

    def _function_parts(self, func: types.FunctionType) -> tuple[Any, ...]:
        names = global_names(func.__code__)
        references = [
            (name, self.reference(func.__globals__[name], names))
            for name in names
            if name in func.__globals__
        ]
        # A method reads attributes of its class through ``self`` (``self.FACTOR``).
        owner = owner_class(func)
        if owner is not None and self.is_project(owner):
            references += [
                (f"self.{name}", self.reference(getattr(owner, name), ()))
                for name in names
                if name not in func.__globals__ and hasattr(owner, name)
            ]
        # Modules imported inside the function are not globals: ``from pkg.helpers import
        # build`` in its body names ``pkg.helpers`` and ``build``.
        package = func.__globals__.get("__package__")
        for name in imported_modules(func.__code__, package):
            module = sys.modules.get(name) or self._import_if_project(name)
            if module is None:
                references.append((name, ("module", name, self.distribution_version(name))))
            else:
                references.append((name, self.reference(module, names)))
        cells = [self.reference(cell.cell_contents, names) for cell in func.__closure__ or ()]
        defaults = [self.reference(value, names) for value in func.__defaults__ or ()]
        kwdefaults = {k: self.reference(v, names) for k, v in (func.__kwdefaults__ or {}).items()}
        return ("function", _name(func), code_hash(func), references, cells, defaults, kwdefaults)

    def _class_parts(self, cls: type) -> tuple[Any, ...]:
        if not self.is_project(cls):
            return ("external", _name(cls), self.distribution_version(cls.__module__))
        bases = [self.reference(base, ()) for base in cls.__bases__]
        members = {}
        for attribute, value in vars(cls).items():
            if attribute in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
                continue
            if isinstance(value, property):
                value = (value.fget, value.fset, value.fdel)
            elif isinstance(value, functools.cached_property):
                value = value.func
            members[attribute] = self.reference(value, ())
        return ("class", _name(cls), bases, members)

    def reference(self, value: Any, names: Iterable[str]) -> Any:
        """What a reference from project code to ``value`` contributes to a key."""
        if isinstance(value, tuple) and all(callable(item) or item is None for item in value):
            return [self.reference(item, names) for item in value]
        if isinstance(value, types.ModuleType):
            return self._module_reference(value, names)
        code_like = (type, types.FunctionType, types.MethodType, staticmethod, classmethod)
        if isinstance(value, code_like) or hasattr(value, "__wrapped__"):
            owner = getattr(getattr(value, "__wrapped__", value), "__module__", None)
            if owner is None or self._module_in_project(owner):
                return self.of(value)
            return ("external", _name(value), self.distribution_version(owner))
        external = not self._module_in_project(getattr(value, "__module__", None) or "")
        if callable(value) and external and not isinstance(value, functools.partial):
            return ("external", _name(value), self.distribution_version(value.__module__ or ""))
        try:
            return ("data", self.data_digest(value))
        except UnhashableError:
            return ("opaque", type(value).__module__, type(value).__qualname__)

    def data_digest(self, value: Any) -> str:
        """Digest of a value for a key: by content, and the project's functions and
        classes in it (a table of functions, an instance, a parameter) by their code."""
        return content_hash(value, self.rootdir, self._project_code)

    def _project_code(self, obj: Any) -> str | None:
        if isinstance(obj, type | types.FunctionType) and self.is_project(obj):
            return self.of(obj)
        return None

    def _module_reference(self, module: types.ModuleType, names: Iterable[str]) -> Any:
        if not self._module_in_project(module.__name__):
            return ("module", module.__name__, self.distribution_version(module.__name__))
        if module.__name__ in self._modules_active:  # modules that import each other
            self._placeholders += 1
            return ("module", module.__name__, "recursive")
        # ``helpers.load(...)`` reads attribute ``load`` of a project module: follow the
        # attributes whose names the code uses; ``pkg.helpers.load(...)`` goes through a
        # submodule, whose attributes are named by the same code.
        used = sorted(name for name in set(names) if hasattr(module, name))
        self._modules_active.add(module.__name__)
        try:
            followed = []
            for name in used:
                value = getattr(module, name)
                inner = names if isinstance(value, types.ModuleType) else ()
                followed.append((name, self.reference(value, inner)))
        finally:
            self._modules_active.discard(module.__name__)
        return ("module", module.__name__, followed)

    def _import_if_project(self, name: str) -> types.ModuleType | None:
        """A project module the function imports when it runs, imported now: on a hit
        it never runs, and the key must still see the module's code."""
        try:
            spec = importlib.util.find_spec(name.partition(".")[0])
        except (ImportError, ValueError):
            return None
        origin = getattr(spec, "origin", None)
        if not origin or not self._path_in_project(Path(origin), name):
            return None
        try:
            return importlib.import_module(name)
        except Exception:  # the fixture will fail the same way when it runs
            return None

    def is_project(self, obj: Any) -> bool:
        return self._module_in_project(getattr(obj, "__module__", None) or "")

    def module_in_project(self, module_name: str) -> bool:
        """Whether the module named so is the project's (counted by code, not version)."""
        return self._module_in_project(module_name)

    def _module_in_project(self, module_name: str) -> bool:
        known = self._project_modules.get(module_name)
        if known is None:
            known = self._project_modules[module_name] = self._locate(module_name)
        return known

    def _locate(self, module_name: str) -> bool:
        if module_name.partition(".")[0] == "pytest_memo":
            return False  # ours (the cache() wrapper): counted by version, even when editable
        module = sys.modules.get(module_name)
        filename = getattr(module, "__file__", None)
        if not filename:
            return False
        return self._path_in_project(Path(filename), module_name)

    def _path_in_project(self, path: Path, module_name: str) -> bool:
        """Code counts by its code unless it is installed (site-packages) or the standard
        library, which count by version: code outside the rootdir that is not installed
        (a sibling ``src/`` on ``pythonpath``) is edited like the project's own."""
        path = path.resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            return False
        if path.is_relative_to(self.rootdir):
            return True
        return module_name.partition(".")[0] not in sys.stdlib_module_names

    def distribution_version(self, module_name: str) -> str:
        top = module_name.partition(".")[0]
        if top in sys.stdlib_module_names or top == "builtins":
            return f"python-{PYTHON}"
        try:  # most distributions are named as their top-level package: skip the scan
            return f"{top}=={importlib.metadata.version(top)}"
        except (importlib.metadata.PackageNotFoundError, ValueError):  # ValueError: no name
            pass
        if self._distributions is None:
            self._distributions = dict(importlib.metadata.packages_distributions())
        versions = []
        for distribution in self._distributions.get(top, []):
            try:
                versions.append(f"{distribution}=={importlib.metadata.version(distribution)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        return ",".join(sorted(versions)) or f"unversioned:{top}"


def _name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qualname}"
