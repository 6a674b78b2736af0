"""Cache keys: everything a memoized value depends on, reduced to one digest.

A key covers the function's identity (module and qualified name, never a path or a line
number) and its code, and, transitively, the code of the project's own functions and
classes it refers to.  Code outside the project (site-packages, the standard library)
counts through the version of the distribution it comes from.  Module-level data a
function reads counts by content.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import xxhash

from pytest_memo.hashing import UnhashableError, code_hash, global_names, hash

__all__ = ["CodeFingerprints", "combine", "files_digest"]

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def combine(**parts: Any) -> str:
    """The key for a set of named, already reduced parts (strings, numbers, tuples)."""
    from pytest_memo.serialize import FORMAT_VERSION  # here: it imports numpy

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
        self._project_modules: dict[str, bool] = {}
        self._distributions: dict[str, list[str]] | None = None

    def of(self, obj: Any) -> str:
        """Fingerprint of a function or class and of the project code it refers to."""
        known = self._done.get(id(obj))
        if known is not None and known[0] is obj:
            return known[1]
        if id(obj) in self._active:  # recursion: the outer call covers this object
            return f"recursive:{_name(obj)}"
        self._active.add(id(obj))
        try:
            digest = hash(self._parts(obj))
        finally:
            self._active.discard(id(obj))
        self._done[id(obj)] = (obj, digest)
        return digest

    def _parts(self, obj: Any) -> tuple[Any, ...]:
        obj = getattr(obj, "__wrapped__", obj)
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
        if callable(value) and not self._module_in_project(getattr(value, "__module__", "")):
            return ("external", _name(value), self.distribution_version(value.__module__ or ""))
        try:
            return ("data", hash(value, self.rootdir))
        except UnhashableError:
            return ("opaque", type(value).__module__, type(value).__qualname__)

    def _module_reference(self, module: types.ModuleType, names: Iterable[str]) -> Any:
        if not self._module_in_project(module.__name__):
            return ("module", module.__name__, self.distribution_version(module.__name__))
        # ``helpers.load(...)`` reads attribute ``load`` of a project module: follow the
        # attributes whose names the code uses.
        used = sorted(name for name in set(names) if hasattr(module, name))
        return (
            "module",
            module.__name__,
            [(n, self.reference(getattr(module, n), ())) for n in used],
        )

    def is_project(self, obj: Any) -> bool:
        return self._module_in_project(getattr(obj, "__module__", None) or "")

    def _module_in_project(self, module_name: str) -> bool:
        known = self._project_modules.get(module_name)
        if known is None:
            known = self._project_modules[module_name] = self._locate(module_name)
        return known

    def _locate(self, module_name: str) -> bool:
        module = sys.modules.get(module_name)
        filename = getattr(module, "__file__", None)
        if not filename:
            return False
        path = Path(filename).resolve()
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            return False
        return path.is_relative_to(self.rootdir)

    def distribution_version(self, module_name: str) -> str:
        top = module_name.partition(".")[0]
        if top in sys.stdlib_module_names or top == "builtins":
            return f"python-{PYTHON}"
        try:  # most distributions are named as their top-level package: skip the scan
            return f"{top}=={importlib.metadata.version(top)}"
        except importlib.metadata.PackageNotFoundError:
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
