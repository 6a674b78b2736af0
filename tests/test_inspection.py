"""Reading what code refers to from its bytecode: what keys and memoized fixtures rely on."""

from __future__ import annotations

import json
import os.path
from typing import Any

from pytest_memo.core.inspection import (
    global_names,
    imported_modules,
    owner_class,
    reads_requesting_test,
    setting_names,
    string_constants,
)

LIMIT = 3


def helper(request: Any) -> Any:
    return request


def scaled(values: list[int]) -> list[int]:
    return [min(value, LIMIT) for value in values]  # names inside the comprehension count


def nested_lookup() -> Any:
    def inner() -> Any:
        return json.dumps("inner text")

    return inner


def imports_inside() -> Any:
    import email.message
    from collections import OrderedDict

    from . import sibling  # type: ignore[attr-defined]  # resolved against the package

    return email.message, OrderedDict, sibling


class Model:
    FACTOR = 2

    def scale(self, x: int) -> int:
        return x * self.FACTOR


def test_global_names_include_nested_code_and_attributes() -> None:
    assert {"min", "LIMIT"} <= set(global_names(scaled.__code__))
    assert {"json", "dumps"} <= set(global_names(nested_lookup.__code__))
    assert "FACTOR" in global_names(Model.scale.__code__)  # self.FACTOR: an attribute


def test_imports_inside_a_function_are_found_with_relative_ones_resolved() -> None:
    found = imported_modules(imports_inside.__code__, "pkg.sub")
    assert found == ["email.message", "collections", "pkg.sub"]
    assert imported_modules(imports_inside.__code__, None)[:2] == ["email.message", "collections"]
    assert imported_modules(scaled.__code__, None) == []


def test_the_class_a_method_belongs_to() -> None:
    assert owner_class(Model.scale) is Model
    assert owner_class(scaled) is None

    def local() -> None:
        pass

    assert owner_class(local) is None  # defined in a function: no class to find


def test_string_constants_of_nested_code() -> None:
    assert "inner text" in string_constants(nested_lookup.__code__)


def test_setting_names_are_the_strings_of_code_that_uses_config() -> None:
    def reads_option(request: Any) -> Any:
        return request.config.getoption("size"), request.config.getini("memo_dir")

    def no_config(request: Any) -> Any:
        return "size"

    assert {"size", "memo_dir"} <= set(setting_names(reads_option.__code__))
    assert setting_names(no_config.__code__) is None


def test_fixtures_that_read_only_their_own_request_attributes() -> None:
    def by_param(request: Any) -> Any:
        return request.param * 2, request.config, request.fixturename

    def in_closure(request: Any) -> Any:
        return lambda: request.param

    assert not reads_requesting_test(by_param.__code__)
    assert not reads_requesting_test(in_closure.__code__)


def test_fixtures_that_may_depend_on_the_requesting_test() -> None:
    def by_node(request: Any) -> Any:
        return request.node.name

    def hands_request_on(request: Any) -> Any:
        return helper(request)

    def by_path(request: Any) -> Any:
        return os.path.basename(str(request.path))

    def stores_request(request: Any) -> Any:
        kept = request
        return kept

    for fixture in (by_node, hands_request_on, by_path, stores_request):
        assert reads_requesting_test(fixture.__code__), fixture.__name__
