"""What a function's code refers to, read from its bytecode without running it.

Keys need it (the globals, imported modules and class attributes whose code or data a
value depends on), and so does the memoized-fixture logic (whether a fixture reads the
requesting test through ``request``, which command-line options it reads).  Every walk
over code objects is here; the results for a code object are computed once.  Nothing
here imports pytest: callers pass in plain functions and code objects.
"""

from __future__ import annotations

import dis
import functools
import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

__all__ = [
    "code_objects",
    "global_names",
    "imported_modules",
    "names",
    "owner_class",
    "reads_requesting_test",
    "request_escapes",
    "request_passed_on",
    "setting_names",
    "string_constants",
]

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


def code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    """A code object and the code nested in it (functions, comprehensions, classes)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def global_names(code: types.CodeType) -> list[str]:
    """Names a code object (and the functions nested in it) looks up as globals or attributes."""
    return sorted({name for nested in code_objects(code) for name in nested.co_names})


# The checks below run for every test a function-scoped fixture serves: each is computed
# once per code object.
names = functools.cache(global_names)


@functools.cache
def string_constants(code: types.CodeType) -> frozenset[str]:
    """The string constants in a code object and the code nested in it."""
    return frozenset(
        const
        for nested in code_objects(code)
        for const in nested.co_consts
        if isinstance(const, str)
    )


def setting_names(code: types.CodeType) -> list[str] | None:
    """Strings that may name a command-line option or ini value the code reads
    (``request.config.getoption("size")``): its string constants; None if it does not
    use ``config`` at all.  The caller keeps those its configuration knows."""
    if "config" not in names(code):
        return None
    return sorted(string_constants(code))


def reads_requesting_test(code: types.CodeType) -> bool:
    """Whether a fixture's code may depend on the test requesting it: it reads
    ``request.node``, ``request.function``, ... or hands ``request`` to other code."""
    return not REQUESTING_TEST_ATTRIBUTES.isdisjoint(names(code)) or request_passed_on(code)


@functools.cache
def request_passed_on(code: types.CodeType) -> bool:
    """Whether the code does anything with ``request`` other than read one of
    :data:`FIXTURE_ATTRIBUTES`: handing it to a helper, which may read the test's node."""
    return any(_passes_request_on(nested, FIXTURE_ATTRIBUTES) for nested in code_objects(code))


@functools.cache
def request_escapes(code: types.CodeType) -> bool:
    """Whether the code does anything with ``request`` other than read an attribute of
    it (``request.node``, ``request.module``...): what other code does with it is unknown."""
    return any(_passes_request_on(nested, None) for nested in code_objects(code))


def _passes_request_on(code: types.CodeType, attributes: frozenset[str] | None) -> bool:
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
            and (attributes is None or following.argval in attributes)
        )
        if not only_reads_an_attribute:
            return True
    return False


def imported_modules(code: types.CodeType, package: str | None) -> list[str]:
    """Absolute names of the modules a code object (and the code nested in it) imports;
    relative imports are resolved against ``package``."""
    found = []
    for nested in code_objects(code):
        instructions = list(dis.get_instructions(nested))
        for position, instruction in enumerate(instructions):
            if instruction.opname != "IMPORT_NAME":
                continue
            level_load = instructions[position - 2] if position >= 2 else None
            level = level_load.argval if level_load and level_load.opname == "LOAD_CONST" else 0
            name = str(instruction.argval)
            if isinstance(level, int) and level > 0:
                try:
                    name = importlib.util.resolve_name("." * level + name, package)
                except (ImportError, ValueError):
                    continue
            found.append(name)
    return found


def owner_class(func: types.FunctionType) -> type | None:
    """The class a function is defined in, found by its qualified name."""
    path = func.__qualname__.split(".")[:-1]
    if not path or "<locals>" in path:
        return None
    found: Any = sys.modules.get(func.__module__)
    for part in path:
        found = getattr(found, part, None)
    return found if isinstance(found, type) else None
