"""Why a value was recomputed: each entry's manifest, and the line ``--memo-explain`` prints.

A key is one digest; to say what changed, each entry also keeps a *manifest*: the named
parts of its key with their digests, readable values where they help (a package version,
``version=``, an option), and where the code lives.  It is a small JSON file beside the
entry (``<key>.parts``), with the files the value read while it was computed (checked on
every hit, see :mod:`pytest_memo.memoize.reads`) and the digest of the value itself.

Comparing the manifest of the value being computed with the newest other entry of the
same slot (fixture and parameter) gives lines such as ``built: helpers.build changed
(helpers.py)``, ``model: numpy 2.4.5 -> 2.4.6`` or ``flavour: $EXPERIMENT changed``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import reprlib
import sys
import types
from pathlib import Path
from typing import Any

from pytest_memo.core.files import write_atomically
from pytest_memo.core.hashing import UnhashableError, code_hash, hash
from pytest_memo.core.inspection import global_names, imported_modules
from pytest_memo.memoize.keys import CodeFingerprints
from pytest_memo.memoize.reads import paused
from pytest_memo.store.local import Store

__all__ = ["Manifest", "code_parts", "describe", "read_manifest", "readable", "write_manifest"]

# name -> [digest, readable value or None, file or None]
Parts = dict[str, list[Any]]
SUFFIX = ".parts"
NO_EARLIER = "no earlier entry"


class Manifest:
    """What is kept beside an entry."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.created: float = float(data.get("created", 0.0))
        self.parts: Parts = dict(data.get("parts", {}))
        self.files: dict[str, Any] = dict(data.get("files", {}))
        self.content: str | None = data.get("content")

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "parts": self.parts,
            "files": self.files,
            "content": self.content,
        }


def manifest_path(store: Store, key: str) -> Path:
    return store.entry_path(key, SUFFIX)


def read_manifest(store: Store, key: str) -> Manifest | None:
    try:
        with paused(), open(manifest_path(store, key), "rb", buffering=0) as file:
            data = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return Manifest(data) if isinstance(data, dict) else None


def write_manifest(store: Store, key: str, manifest: Manifest) -> None:
    with paused():
        write_atomically(manifest_path(store, key), json.dumps(manifest.as_dict()))
        # A remote store shares it: a hit elsewhere checks the files the value read.
        store.sidecar_written(key, SUFFIX)


def age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit} old"
    return f"{seconds:.0f}s old"


def readable(value: Any, limit: int = 60) -> str:
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the code parts -------------------------------------------------------------


def code_parts(fingerprints: CodeFingerprints, function: Any) -> Parts:
    """The function's own code, and each project function, class or data it names (and
    each package it uses, by version), as separate parts."""
    rootdir = fingerprints.rootdir
    function = getattr(function, "__func__", function)
    if not isinstance(function, types.FunctionType):
        return {"code": [fingerprints.of(function), None, _where(function, rootdir)]}
    names = global_names(function.__code__)
    parts: Parts = {}
    own = [code_hash(function)]
    with contextlib.suppress(UnhashableError):
        own.append(hash([fingerprints.reference(v, names) for v in function.__defaults__ or ()]))
    parts["code"] = [hash(own), None, _where(function, rootdir)]
    referenced = [
        (name, function.__globals__[name]) for name in names if name in function.__globals__
    ]
    package = function.__globals__.get("__package__")
    for module_name in imported_modules(function.__code__, package):
        module = sys.modules.get(module_name)
        if module is not None:
            referenced.append((module_name, module))
        else:
            _package(parts, fingerprints, module_name)
    for name, value in referenced:
        _add(parts, fingerprints, f"{function.__module__}.{name}", value, names, depth=0)
    return parts


def _add(
    parts: Parts, fingerprints: CodeFingerprints, label: str, value: Any, names: Any, depth: int
) -> None:
    rootdir = fingerprints.rootdir
    if isinstance(value, types.ModuleType):
        if not fingerprints.is_project(value) and not _project_module(fingerprints, value):
            _package(parts, fingerprints, value.__name__)
            return
        if depth > 1:
            return
        for attribute in sorted(set(names)):
            if hasattr(value, attribute):
                inner = getattr(value, attribute)
                _add(parts, fingerprints, f"{value.__name__}.{attribute}", inner, names, depth + 1)
        return
    code_like = (type, types.FunctionType, types.MethodType, staticmethod, classmethod)
    if isinstance(value, code_like) or hasattr(value, "__wrapped__"):
        target = getattr(getattr(value, "__wrapped__", value), "__func__", value)
        module = getattr(target, "__module__", None) or ""
        if module and not fingerprints.is_project(target):
            _package(parts, fingerprints, module)
            return
        qualname = getattr(target, "__qualname__", None)
        if module and qualname:
            label = f"{module}.{qualname}"
        try:
            digest = hash(fingerprints.reference(value, ()))
        except UnhashableError:
            return
        parts[f"code:{label}"] = [digest, None, _where(target, rootdir)]
        return
    module = getattr(value, "__module__", None)
    if callable(value) and module and not fingerprints.is_project(value):
        _package(parts, fingerprints, module)
        return
    try:
        digest = hash(fingerprints.reference(value, names))
    except UnhashableError:
        return
    parts[f"data:{label}"] = [digest, None, None]


def _project_module(fingerprints: CodeFingerprints, module: types.ModuleType) -> bool:
    return fingerprints.module_in_project(module.__name__)


def _package(parts: Parts, fingerprints: CodeFingerprints, module_name: str) -> None:
    version = fingerprints.distribution_version(module_name)
    if version.startswith("python-"):
        return  # the standard library: the Python version is a part of its own
    top = module_name.partition(".")[0]
    parts[f"package:{top}"] = [hash(version), version, None]


def _where(obj: Any, rootdir: Path) -> str | None:
    try:
        path = Path(inspect.getfile(getattr(obj, "__wrapped__", obj))).resolve()
    except (TypeError, OSError):
        return None
    try:
        return path.relative_to(rootdir).as_posix()
    except ValueError:
        return path.name


# -- saying what changed -----------------------------------------------------------

_ORDER = ("code", "data", "package", "dependency", "file", "version", "option", "ini", "env")


def _rank(name: str) -> tuple[int, str]:
    kind = name.partition(":")[0]
    return (_ORDER.index(kind) if kind in _ORDER else len(_ORDER), name)


def describe(old: Parts, new: Parts) -> list[str]:
    """What differs between two manifests' parts, most actionable first."""
    changes = []
    for name in sorted(set(old) | set(new), key=_rank):
        before, after = old.get(name), new.get(name)
        if before is not None and after is not None and before[0] == after[0]:
            continue
        changes.append(_change(name, before, after))
    return changes


def _change(name: str, before: list[Any] | None, after: list[Any] | None) -> str:
    kind, _, what = name.partition(":")
    shown_before = before[1] if before else None
    shown_after = after[1] if after else None
    where = (after or before or [None, None, None])[2]
    if kind == "code" and not what:
        return f"its code changed ({where})" if where else "its code changed"
    if kind == "code":
        text = (
            f"{what} changed" if before and after else f"{what} {'added' if after else 'removed'}"
        )
        return f"{text} ({where})" if where else text
    if kind == "data":
        return (
            f"{what} changed" if before and after else f"{what} {'added' if after else 'removed'}"
        )
    if kind == "package":
        return f"{what} {_version(shown_before)} -> {_version(shown_after)}"
    if kind == "dependency":
        if before and after and after[1] == "memo" and before[1] == "memo":
            return f"dependency {what!r} was recomputed"
        return f"dependency {what!r} changed"
    if kind == "file":
        return f"{what} changed" if before and after else f"{what} {'added' if after else 'gone'}"
    if kind == "env":
        return f"${what} changed"
    if kind in ("version", "max_age"):
        return f"{kind}= {shown_before} -> {shown_after}"
    if kind == "option":
        return f"option {what}: {shown_before} -> {shown_after}"
    if kind == "ini":
        return f"ini {what}: {shown_before} -> {shown_after}"
    if kind == "python":
        return f"Python {shown_before} -> {shown_after}"
    return f"{name} changed"


def _version(shown: str | None) -> str:
    if not shown:
        return "(none)"
    return ",".join(item.partition("==")[2] or item for item in shown.split(","))


def explanation(store: Store, slot: str, key: str, parts: Parts, reason: str | None = None) -> str:
    """Why the value of ``key`` is computed: ``reason`` when its own entry was found stale,
    else what differs from the newest other entry of the slot."""
    if reason is not None:
        return reason
    earlier = [(created, other) for other, created in store.keys_in_slot(slot) if other != key]
    if not earlier:
        return NO_EARLIER
    _, other = max(earlier)
    manifest = read_manifest(store, other)
    if manifest is None:
        return "an earlier entry exists, with no record of its parts (stored by an older version)"
    changes = describe(manifest.parts, parts)
    return ", ".join(changes) if changes else "its key changed"


def detail_lines(manifest: Manifest | None) -> list[str]:
    """An entry's parts for ``--memo-show -v``."""
    if manifest is None:
        return ["(no record of its parts)"]
    lines = []
    for name in sorted(manifest.parts, key=_rank):
        digest, shown, where = manifest.parts[name]
        text = shown if shown is not None else str(digest)[:12]
        lines.append(f"{name}: {text}" + (f" ({where})" if where else ""))
    lines.extend(f"read: {path}" for path in sorted(manifest.files))
    return lines
