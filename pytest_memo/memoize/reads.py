"""What a memoized value reads besides its arguments: environment variables and files.

*Environment variables* are found in the code, as option names are: the names spelled
out in ``os.environ["X"]``, ``os.environ.get("X")``, ``os.getenv("X")`` and ``"X" in
os.environ``, in the fixture or function and in the project code it reaches.  Their
values enter the key.

*Files* are seen while the value is computed: an audit hook on ``open`` records the files
under the rootdir that the computing thread opens for reading.  They are kept with the
entry and checked on every hit: size and modification time first, the content hash only
when those changed (a ``touch`` keeps the entry, an edit does not).

Audit hooks cannot be removed: one is installed, once, and a thread-local says whether
the thread is computing a value.  Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import dis
import functools
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from pytest_memo.core.inspection import code_objects, global_names

__all__ = ["Recorder", "check_files", "environment_names", "file_digest", "recording"]

# -- environment variables ---------------------------------------------------

_ENV_ACCESS = frozenset({"environ", "getenv", "environb", "getenvb"})
_SKIPPED = frozenset({"PUSH_NULL", "CACHE", "NOP", "EXTENDED_ARG", "PRECALL", "COPY"})


@functools.cache
def _code_environment_names(code: types.CodeType) -> frozenset[str]:
    found: set[str] = set()
    for nested in code_objects(code):
        if _ENV_ACCESS.isdisjoint(nested.co_names):
            continue
        instructions = [i for i in dis.get_instructions(nested) if i.opname not in _SKIPPED]
        for position, instruction in enumerate(instructions):
            if instruction.argval not in _ENV_ACCESS or not instruction.opname.startswith(
                ("LOAD_ATTR", "LOAD_METHOD", "LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_FAST")
            ):
                continue
            following = instructions[position + 1 : position + 3]
            # os.environ.get("X"): skip the method
            if following and following[0].argval in ("get", "pop", "setdefault"):
                following = following[1:]
            if following and following[0].opname == "LOAD_CONST":
                if isinstance(following[0].argval, str):
                    found.add(following[0].argval)
                continue
            # "X" in os.environ: the constant comes before (and before ``os``)
            after = instructions[position + 1 : position + 2]
            if not after or after[0].opname != "CONTAINS_OP":
                continue
            back = position - 1
            if instruction.opname.startswith(("LOAD_ATTR", "LOAD_METHOD")):
                back -= 1
            constant = instructions[back] if back >= 0 else None
            if constant and constant.opname == "LOAD_CONST" and isinstance(constant.argval, str):
                found.add(constant.argval)
    return frozenset(found)


def environment_names(function: Any, module_in_project: Callable[[str], bool]) -> list[str]:
    """Environment variables ``function`` and the project code it reaches read by name.

    ``module_in_project(name)`` says whether a module belongs to the project (installed
    packages and the standard library are not followed).
    """

    def is_project(obj: Any) -> bool:
        if isinstance(obj, types.ModuleType):
            return module_in_project(obj.__name__)
        return module_in_project(getattr(obj, "__module__", None) or "")

    found: set[str] = set()
    for code in _reachable_code(function, is_project):
        found.update(_code_environment_names(code))
    return sorted(found)


def _reachable_code(function: Any, is_project: Any) -> list[types.CodeType]:
    """Code objects of ``function`` and of the project functions and methods it reaches
    through globals, module attributes and class members, transitively."""
    seen: set[int] = set()
    codes: list[types.CodeType] = []
    pending: list[Any] = [function]
    while pending:
        obj = pending.pop()
        obj = getattr(obj, "__func__", obj)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None and not isinstance(obj, types.ModuleType):
            pending.append(wrapped)
        if isinstance(obj, type):
            if is_project(obj):
                pending.extend(
                    value
                    for value in vars(obj).values()
                    if isinstance(value, types.FunctionType | staticmethod | classmethod | property)
                )
            continue
        if isinstance(obj, property):
            pending.extend(f for f in (obj.fget, obj.fset) if f is not None)
            continue
        if not isinstance(obj, types.FunctionType):
            continue
        if obj is not function and not is_project(obj):
            continue
        codes.append(obj.__code__)
        names = global_names(obj.__code__)
        for name in names:
            value = obj.__globals__.get(name)
            if isinstance(value, types.ModuleType):
                if not is_project(value):
                    continue
                for attribute in names:
                    inner = getattr(value, attribute, None)
                    if isinstance(inner, types.FunctionType | type):
                        pending.append(inner)
            elif isinstance(value, types.FunctionType | type):
                pending.append(value)
        for cell in obj.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                if isinstance(cell.cell_contents, types.FunctionType | type):
                    pending.append(cell.cell_contents)
    return codes


def environment_values(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


# -- files ---------------------------------------------------------------------

_IGNORED_SUFFIXES = (".py", ".pyc", ".pyi", ".pth", ".so", ".pyd")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class Recorder:
    """The files one computation read, by path relative to the rootdir."""

    def __init__(self, rootdir: Path, excluded: Path | None) -> None:
        self.rootdir = rootdir
        self.prefix = str(rootdir) + os.sep
        self.excluded = None if excluded is None else str(excluded) + os.sep
        self.files: set[str] = set()

    def saw(self, path: str) -> None:
        if not path.startswith(self.prefix) or path.endswith(_IGNORED_SUFFIXES):
            return
        if self.excluded is not None and path.startswith(self.excluded):
            return
        relative = path[len(self.prefix) :]
        if "__pycache__" in relative or relative.startswith(".git" + os.sep):
            return
        self.files.add(Path(relative).as_posix())


class _Gate(threading.local):
    recorders: tuple[Recorder, ...] = ()


_gate = _Gate()
_installed = False
_install_lock = threading.Lock()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open":
        return
    recorders = _gate.recorders
    if not recorders:
        return
    path, mode, flags = args
    if isinstance(mode, str):
        if any(letter in mode for letter in "wax+"):
            return
    elif isinstance(flags, int) and flags & _WRITE_FLAGS:
        return
    if isinstance(path, int):
        return
    try:
        text = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    for recorder in recorders:
        recorder.saw(text)


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit)
            _installed = True


@contextlib.contextmanager
def recording(rootdir: Path, excluded: Path | None) -> Iterator[Recorder]:
    """Record the files this thread opens for reading under ``rootdir`` (except under
    ``excluded``: the store) until the block ends.  Nested recordings all see the files
    (a cached function called while another value is computed)."""
    _install()
    recorder = Recorder(rootdir.resolve(), None if excluded is None else excluded.resolve())
    outer = _gate.recorders
    _gate.recorders = (*outer, recorder)
    try:
        yield recorder
    finally:
        _gate.recorders = outer


def note_files(files: Any, rootdir: Path) -> None:
    """A stored value was used while other values are being computed: the files it was
    computed from count for them too."""
    recorders = _gate.recorders
    if not recorders:
        return
    root = str(rootdir.resolve()) + os.sep
    for relative in files:
        for recorder in recorders:
            recorder.saw(root + relative.replace("/", os.sep))


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Our own reads (the store, hashing files) are not the value's."""
    outer = _gate.recorders
    _gate.recorders = ()
    try:
        yield
    finally:
        _gate.recorders = outer


def file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with paused(), path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return str(digest.hexdigest())


def file_state(rootdir: Path, relative: str) -> list[Any] | None:
    """[size, mtime_ns, content digest] of a file, or None if it cannot be read."""
    path = rootdir / relative
    try:
        status = path.stat()
        return [status.st_size, status.st_mtime_ns, file_digest(path)]
    except OSError:
        return None


def check_files(rootdir: Path, files: dict[str, Any]) -> tuple[str | None, bool]:
    """The first recorded file that changed (or disappeared) since it was recorded, or
    None; and whether some file only got a new modification time (its entry in ``files``
    is then updated).  Sizes and times first; contents only when those differ."""
    touched = False
    for relative, recorded in files.items():
        path = rootdir / relative
        try:
            status = path.stat()
        except OSError:
            return relative, touched
        if recorded is None:
            continue  # could not be read then: nothing to compare
        size, mtime_ns, digest = recorded
        if status.st_size == size and status.st_mtime_ns == mtime_ns:
            continue
        if status.st_size != size:
            return relative, touched
        try:
            if file_digest(path) != digest:
                return relative, touched
        except OSError:
            return relative, touched
        files[relative] = [size, status.st_mtime_ns, digest]
        touched = True
    return None, touched
