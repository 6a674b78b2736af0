"""Cache keys: everything a memoized value depends on, reduced to one digest.

A key covers the function's identity (module and qualified name, never a path or a line
number) and its code, and, transitively, the code of the project's own functions and
classes it refers to.  Code outside the project (site-packages, the standard library)
counts through the version of the distribution it comes from.  Module-level data a
function reads counts by content.
"""

from __future__ import annotations

import enum
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import threading
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


# What computing a fingerprint read, checked before the fingerprint is used again: a
# fingerprint is reused only while everything it read is the same object with the same
# content.  Kinds of checks:
_GET = 0  # (_GET, mapping, name, value): mapping.get(name) is still value (or absent)
_ATTR = 1  # (_ATTR, obj, name, value): getattr(obj, name) is still value (or absent)
_CELL = 2  # (_CELL, cell, value): a closure cell still holds value
_DATA = 3  # (_DATA, value, digest): a mutable value (a list, a dict) still has that content
_FUNCTION = 4  # (_FUNCTION, func, code, defaults, kwdefaults): none of them reassigned
_KEYS = 5  # (_KEYS, namespace, names): a class has the same attributes in the same order
_ABSENT = object()  # stands for a name a namespace does not have
# Class attributes that are not the class's behavior: moving a class changes
# __firstlineno__ (Python 3.13+), a docstring changes __doc__.
_NOT_MEMBERS = frozenset(
    {"__dict__", "__weakref__", "__doc__", "__module__", "__qualname__", "__firstlineno__"}
)
_ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None), range, type(...)})


def _immutable(value: Any) -> bool:
    """Whether a value's content cannot change while the same object: then checking
    that the same object is read is enough, without hashing it again."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    return kind in (tuple, frozenset) and all(_immutable(item) for item in value)


class CodeFingerprints:
    """Fingerprints of functions and classes: what they do and what they read.

    The code of a function never changes while the process runs, but the data it reads
    may (a fixture or a test setting ``helpers.MODE``, ``monkeypatch``, a list appended
    to): a fingerprint is computed once and reused while every global, attribute, cell
    and mutable value it read is still the same, checked on each use.
    """

    def __init__(self, rootdir: Path) -> None:
        self.rootdir = rootdir.resolve()
        # id -> (object, fingerprint, checks of what computing it read)
        self._done: dict[int, tuple[object, str, list[tuple[Any, ...]]]] = {}
        self._active: set[int] = set()
        self._modules_active: set[str] = set()
        self._placeholders = 0  # recursion placeholders handed out so far
        self._project_modules: dict[str, bool] = {}
        self._distributions: dict[str, list[str]] | None = None
        self._versions: dict[str, str] = {}
        # What the fingerprints being computed read, innermost last: (kind, id, name) -> check.
        self._reading: list[dict[tuple[int, int, str], tuple[Any, ...]]] = []
        self._lock = threading.RLock()

    def of(self, obj: Any) -> str:
        """Fingerprint of a function or class and of the project code it refers to."""
        # One computation at a time: tests running in threads (--par threads) share the
        # fingerprints, and what a computation reads and has in progress is per computation.
        with self._lock:
            return self._of(obj)

    def _of(self, obj: Any) -> str:
        known = self._done.get(id(obj))
        if known is not None and known[0] is obj and id(obj) not in self._active:
            self._active.add(id(obj))
            try:
                valid = self._still_valid(known[2])
            finally:
                self._active.discard(id(obj))
            if valid:
                self._note_all(known[2])
                return known[1]
        if id(obj) in self._active:  # recursion: the outer call covers this object
            self._placeholders += 1
            return f"recursive:{_name(obj)}"
        self._active.add(id(obj))
        placeholders = self._placeholders
        self._reading.append({})
        try:
            digest = hash(self._parts(obj))
        finally:
            self._active.discard(id(obj))
            checks = list(self._reading.pop().values())
        self._note_all(checks)
        # A fingerprint that stands in for an object being fingerprinted further out is
        # complete only there: another fixture reaching this object first must not reuse it.
        if self._placeholders == placeholders:
            self._done[id(obj)] = (obj, digest, checks)
        return digest

    # -- what a fingerprint read ----------------------------------------------

    def _note(self, check: tuple[Any, ...]) -> None:
        if self._reading:
            name = check[2] if check[0] in (_GET, _ATTR) else ""
            self._reading[-1][(check[0], id(check[1]), name)] = check

    def _note_all(self, checks: list[tuple[Any, ...]]) -> None:
        if self._reading:
            for check in checks:
                self._note(check)

    def _read(self, mapping: Any, name: str) -> Any:
        """``mapping[name]`` (a module's or function's globals, a class's ``__dict__``),
        or :data:`_ABSENT`, noted for the fingerprint being computed."""
        value = mapping.get(name, _ABSENT)
        self._note((_GET, mapping, name, value))
        return value

    def _read_attribute(self, obj: Any, name: str) -> Any:
        value = getattr(obj, name, _ABSENT)
        self._note((_ATTR, obj, name, value))
        return value

    def _still_valid(self, checks: list[tuple[Any, ...]]) -> bool:
        for check in checks:
            kind = check[0]
            if kind == _GET:
                if check[1].get(check[2], _ABSENT) is not check[3]:
                    return False
            elif kind == _ATTR:
                current = getattr(check[1], check[2], _ABSENT)
                # A classmethod read from a class is a new bound method on every read.
                if current is not check[3] and not (
                    type(current) is types.MethodType and current == check[3]
                ):
                    return False
            elif kind == _CELL:
                if _cell_contents(check[1]) is not check[2]:
                    return False
            elif kind == _FUNCTION:
                func = check[1]
                if (
                    func.__code__ is not check[2]
                    or func.__defaults__ is not check[3]
                    or func.__kwdefaults__ is not check[4]
                ):
                    return False
            elif kind == _KEYS:
                if tuple(check[1]) != check[2]:
                    return False
            else:
                try:
                    if self.data_digest(check[1]) != check[2]:
                        return False
                except UnhashableError:
                    return False
        return True

    # -- parts of a fingerprint -----------------------------------------------

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
        self._note((_FUNCTION, func, func.__code__, func.__defaults__, func.__kwdefaults__))
        names = global_names(func.__code__)
        globals_ = func.__globals__
        references = []
        for name in names:
            value = self._read(globals_, name)
            if value is not _ABSENT:
                references.append((name, self.reference(value, names)))
        # A method reads attributes of its class through ``self`` (``self.FACTOR``).
        owner = owner_class(func)
        if owner is not None and self.is_project(owner):
            for name in names:
                if name in globals_:
                    continue
                value = self._read_attribute(owner, name)
                if value is not _ABSENT:
                    references.append((f"self.{name}", self.reference(value, ())))
        # Modules imported inside the function are not globals: ``from pkg.helpers import
        # build`` in its body names ``pkg.helpers`` and ``build``.
        package = globals_.get("__package__")
        for name in imported_modules(func.__code__, package):
            module = sys.modules.get(name) or self._import_if_project(name)
            if module is None:
                references.append((name, ("module", name, self.distribution_version(name))))
            else:
                references.append((name, self.reference(module, names)))
        cells = []
        for cell in func.__closure__ or ():
            contents = _cell_contents(cell)
            self._note((_CELL, cell, contents))
            cells.append(None if contents is _ABSENT else self.reference(contents, names))
        defaults = [self.reference(value, names) for value in func.__defaults__ or ()]
        kwdefaults = {k: self.reference(v, names) for k, v in (func.__kwdefaults__ or {}).items()}
        return ("function", _name(func), code_hash(func), references, cells, defaults, kwdefaults)

    def _class_parts(self, cls: type) -> tuple[Any, ...]:
        if not self.is_project(cls):
            return ("external", _name(cls), self.distribution_version(cls.__module__))
        self._note((_ATTR, cls, "__bases__", cls.__bases__))
        namespace = cls.__dict__
        self._note((_KEYS, namespace, tuple(namespace)))
        bases = [self.reference(base, ()) for base in cls.__bases__]
        if isinstance(cls, enum.EnumMeta):
            return self._enum_parts(cls, bases)
        members = {}
        for attribute in namespace:
            if attribute in _NOT_MEMBERS:
                continue
            value = self._read(namespace, attribute)
            if isinstance(value, property):
                value = (value.fget, value.fset, value.fdel)
            elif isinstance(value, functools.cached_property):
                value = value.func
            members[attribute] = self.reference(value, ())
        return ("class", _name(cls), bases, members)

    def _enum_parts(self, cls: enum.EnumMeta, bases: list[Any]) -> tuple[Any, ...]:
        """An enum counts by its members' names and values, in order, and by the methods
        and attributes it defines; not by the tables the enum machinery keeps."""
        members: list[tuple[str, Any]] = []
        for name in cls.__members__:  # aliases too
            value = getattr(cls.__members__[name], "_value_", None)
            members.append((name, self.reference(value, ())))
        namespace = cls.__dict__
        others = {}
        for attribute in namespace:
            value = self._read(namespace, attribute)
            if attribute in cls.__members__ or _enum_internal(attribute, value):
                continue
            if attribute in _NOT_MEMBERS:
                continue
            if isinstance(value, property | types.DynamicClassAttribute):
                value = (value.fget, value.fset, value.fdel)
            others[attribute] = self.reference(value, ())
        return ("enum", _name(cls), bases, members, others)

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
        module = _module_of(value)
        external = not self._module_in_project(module)
        if callable(value) and external and not isinstance(value, functools.partial):
            return ("external", _name(value), self.distribution_version(module))
        try:
            digest = self.data_digest(value)
        except UnhashableError:
            return ("opaque", type(value).__module__, type(value).__qualname__)
        if not _immutable(value):  # a list appended to, a dict updated in place
            self._note((_DATA, value, digest))
        return ("data", digest)

    def data_digest(self, value: Any) -> str:
        """Digest of a value for a key: by content, in order (a dict's order is what code
        iterating it sees), and the project's functions and classes in it (a table of
        functions, an instance, a parameter) by their code."""
        return content_hash(value, self.rootdir, self._project_code, ordered=True)

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
        namespace = module.__dict__
        self._modules_active.add(module.__name__)
        try:
            followed = []
            for name in sorted(set(names)):
                value = self._read(namespace, name)
                if value is _ABSENT:
                    continue
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
        known = self._versions.get(top)
        if known is None:
            known = self._versions[top] = self._distribution_version(top)
        return known

    def _distribution_version(self, top: str) -> str:
        if not top or top in sys.stdlib_module_names or top == "builtins":
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


def _cell_contents(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # not assigned yet
        return _ABSENT


def _module_of(value: Any) -> str:
    """The module a value comes from; for a method of a built-in type, which has none
    (``object.__new__``), the module of the type."""
    module = getattr(value, "__module__", None)
    if isinstance(module, str) and module:
        return module
    owner = getattr(value, "__objclass__", None) or getattr(value, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        owner_module = getattr(owner if isinstance(owner, type) else type(owner), "__module__", "")
        return owner_module if isinstance(owner_module, str) else ""
    return ""


def _enum_internal(attribute: str, value: Any) -> bool:
    """The tables the enum machinery keeps in every enum (``_member_map_``, ...): sunder
    names holding no function (``_missing_`` and ``_generate_next_value_`` count)."""
    sunder = attribute.startswith("_") and attribute.endswith("_") and attribute[1:2] != "_"
    return sunder and not isinstance(value, types.FunctionType | classmethod | staticmethod)


def _name(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qualname}"
