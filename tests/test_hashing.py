"""pytest_memo.hash: equal content, equal digest; any difference, another digest."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_memo import UnhashableError, hash

SCRIPT = """
import numpy as np
from pytest_memo import hash
value = {
    "set": {"alpha", "beta", "gamma", "delta"},
    "frozen": frozenset({"x", "y", ("t", 1)}),
    "dict": {"b": 1, "a": [1.5, None, b"raw"]},
    "array": np.arange(12.0).reshape(3, 4),
    "strings": [f"s{i}" for i in range(40)],
}
print(hash(value))
"""


def test_the_digest_is_the_same_in_other_processes_and_hash_seeds() -> None:
    digests = {
        subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("0", "1", "12345")
    }
    assert len(digests) == 1
    assert len(next(iter(digests))) == 32


def test_insertion_order_does_not_count() -> None:
    assert hash({"a": 1, "b": 2}) == hash({"b": 2, "a": 1})
    assert hash({1, 2, 3}) == hash({3, 2, 1})
    assert hash({1: "x", "k": "y"}) == hash({"k": "y", 1: "x"})


@given(st.recursive(st.integers() | st.text() | st.floats(allow_nan=False), st.lists))
def test_equal_values_hash_equal(value: Any) -> None:
    import copy

    assert hash(value) == hash(copy.deepcopy(value))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (0.0, -0.0),
        (1, 1.0),
        (1, True),
        ("1", b"1"),
        ([1, 2], (1, 2)),
        ([[1], 2], [1, [2]]),
        ({"a": 1}, {"a": 2}),
        (frozenset({1}), {1}),
    ],
)
def test_different_values_hash_differently(left: object, right: object) -> None:
    assert hash(left) != hash(right)


def test_arrays_hash_by_content_not_layout(tmp_path: Path) -> None:
    array = np.arange(24.0).reshape(4, 6)
    reference = hash(array)
    assert hash(np.asfortranarray(array)) == reference
    wide = np.zeros((4, 12))
    wide[:, ::2] = array
    assert hash(wide[:, ::2]) == reference  # a strided view with the same values
    mapped = np.memmap(tmp_path / "a.bin", dtype=np.float64, mode="w+", shape=(4, 6))
    mapped[:] = array
    assert hash(mapped) == reference
    changed = array.copy()
    changed.reshape(-1).view(np.uint64)[5] ^= 1  # the last bit of one element
    assert hash(changed) != reference
    assert hash(array.astype(np.float32)) != reference
    assert hash(array.reshape(6, 4)) != reference
    assert hash(array.view(np.int64)) != reference  # same bytes, another dtype


def test_large_arrays_hash_by_content() -> None:
    array = np.random.default_rng(1).random(6_000_000)  # 48 MB: hashed in parallel pieces
    assert hash(array) == hash(array.copy())
    changed = array.copy()
    changed[-1] = 0.5
    assert hash(changed) != hash(array)


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


class Plain:
    def __init__(self, value: object) -> None:
        self.value = value


def test_dataclasses_and_plain_objects() -> None:
    assert hash(Point(1, [2])) == hash(Point(1, [2]))
    assert hash(Point(1, [2])) != hash(Point(1, [3]))
    assert hash(Plain({"a", "b"})) == hash(Plain({"b", "a"}))
    assert hash(Plain(1)) != hash(Plain(2))


def test_pandas_objects_hash_by_content() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    assert hash(frame) == hash(frame.copy())
    assert hash(frame) == hash(pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}))
    changed = frame.copy()
    changed.loc[1, "b"] = "Y"
    assert hash(changed) != hash(frame)
    assert hash(frame["a"]) != hash(frame["a"].rename("c"))


def test_cycles_are_hashed() -> None:
    first: list[Any] = [1]
    first.append(first)
    second: list[Any] = [1]
    second.append(second)
    assert hash(first) == hash(second)


def test_functions_hash_by_what_they_do() -> None:
    def make(offset: int) -> Any:
        return lambda x: x + offset

    assert hash(make(1)) == hash(make(1))
    assert hash(make(1)) != hash(make(2))
    assert hash(lambda x: x + 1) != hash(lambda x: x - 1)


def test_paths_inside_a_root_count_as_relative(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert hash(one / "data.csv", relative_to=one) == hash(two / "data.csv", relative_to=two)
    assert hash(one / "data.csv") != hash(two / "data.csv")


def test_unhashable_objects_raise_a_clear_type_error() -> None:
    with pytest.raises(UnhashableError, match="lock"):
        hash({"lock": threading.Lock()})
    assert issubclass(UnhashableError, TypeError)


def test_in_keys_the_order_of_dict_items_counts() -> None:
    from collections import OrderedDict

    from pytest_memo.core.hashing import content_hash

    for first, second in (
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({1: "x", "k": "y"}, {"k": "y", 1: "x"}),
        (OrderedDict(a=1, b=2), OrderedDict(b=2, a=1)),
    ):
        assert hash(first) == hash(second)  # the public hash: order does not count
        assert content_hash(first, ordered=True) != content_hash(second, ordered=True)
        assert content_hash(first, ordered=True) == content_hash(type(first)(first), ordered=True)


def test_in_keys_path_strings_inside_the_root_count_as_relative(tmp_path: Path) -> None:
    from pytest_memo.core.hashing import content_hash

    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        root.mkdir()

    def digest(root: Path, text: str) -> str:
        return content_hash({"file": text}, root, ordered=True)

    assert digest(one, f"{one}/conftest.py") == digest(two, f"{two}/conftest.py")
    assert digest(one, str(one)) == digest(two, str(two))
    assert digest(one, f"{one}/a.py") != digest(one, f"{one}/b.py")
    assert digest(one, f"{one}/a.py") != digest(one, "<root>/a.py")
    assert digest(one, f"{one}x/a.py") != digest(two, f"{two}x/a.py")  # outside the root


def test_code_hash_ignores_docstrings_of_nested_functions_and_functions_returning_none() -> None:
    from pytest_memo.core.hashing import code_hash

    namespace: dict[str, Any] = {}
    exec(
        "def returns_none():\n    return None\n"
        "def returns_none_documented():\n    'Doc.'\n    return None\n"
        "def returns_one():\n    return 1\n"
        "def returns_one_documented():\n    'Doc.'\n    return 1\n"
        "def returns_two():\n    return 2\n"
        "def outer():\n    def inner():\n        return None\n    return inner\n"
        "def outer_documented():\n    def inner():\n        'Doc.'\n        return None\n"
        "    return inner\n",
        namespace,
    )
    digests = {
        name: code_hash(function) for name, function in namespace.items() if name != "__builtins__"
    }
    assert digests["returns_none"] == digests["returns_none_documented"]
    assert digests["returns_one"] == digests["returns_one_documented"]
    assert digests["outer"] == digests["outer_documented"]
    assert len({digests["returns_none"], digests["returns_one"], digests["returns_two"]}) == 3
