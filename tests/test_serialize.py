"""pytest_memo.dump / load: round trips, memory maps, atomic writes, and damaged files."""

from __future__ import annotations

import array
import io
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pytest_memo
from pytest_memo import CorruptFileError, dump, load
from pytest_memo.core import codecs
from pytest_memo.core.serialize import FORMAT_VERSION, OUT_OF_BAND_MIN_BYTES

COMPRESSIONS = [None, "lz4", "zlib", "gzip", "bz2", "lzma", "xz", ("lz4", 1), ("lz4", 5), True, 3]

DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.unsigned_integer_dtypes(endianness=">"),
    hnp.floating_dtypes(endianness="<"),
    hnp.floating_dtypes(endianness=">"),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.timedelta64_dtypes(),
    hnp.unicode_string_dtypes(max_len=4),
    hnp.byte_string_dtypes(max_len=4),
    st.just(np.dtype([("x", "<i4"), ("y", ">f8"), ("tag", "S3")])),
)
ARRAYS = hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))


def layouts(array: np.ndarray[Any, Any]) -> st.SearchStrategy[np.ndarray[Any, Any]]:
    variants = [array, np.asfortranarray(array)]
    if array.ndim and array.shape[0] > 1:
        variants.append(array[::2])  # not contiguous
    return st.sampled_from(variants)


NESTED = st.recursive(
    ARRAYS.flatmap(layouts) | st.integers() | st.text(max_size=5) | st.none() | st.floats(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
        | st.tuples(children, children)
    ),
    max_leaves=8,
)


def assert_same(left: Any, right: Any) -> None:
    if isinstance(left, np.ndarray):
        assert isinstance(right, np.ndarray)
        assert left.dtype == right.dtype and left.shape == right.shape
        assert left.tobytes() == np.ascontiguousarray(right).tobytes() or np.array_equal(
            left, right, equal_nan=left.dtype.kind in "fc"
        )
    elif isinstance(left, dict):
        assert left.keys() == right.keys()
        for key in left:
            assert_same(left[key], right[key])
    elif isinstance(left, list | tuple):
        assert type(left) is type(right) and len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            assert_same(a, b)
    elif isinstance(left, float) and left != left:
        assert right != right
    else:
        assert left == right


@given(NESTED)
def test_nested_objects_round_trip_with_equal_hashes(value: Any) -> None:
    buffer = io.BytesIO()
    dump(value, buffer)
    buffer.seek(0)
    restored = load(buffer)
    assert_same(value, restored)
    assert pytest_memo.hash(restored) == pytest_memo.hash(value)


@pytest.mark.parametrize("compress", COMPRESSIONS, ids=str)
@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).random((300, 100)),  # 240 kB: out of band
        np.sin(np.linspace(0, 30, 50_000)).astype(">f8"),
        np.arange(40_000, dtype=np.int32).reshape(200, 200).T,  # Fortran order
        np.arange(100_000, dtype=np.int16)[::3],  # not contiguous
        np.array(["2020-01-01"] * 20_000, dtype="datetime64[ns]"),
        np.zeros(20_000, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S5")]),
        np.array([{"a": 1}, None, "text"] * 1000, dtype=object),
    ],
    ids=["float64", "big-endian", "fortran", "strided", "datetime", "structured", "object"],
)
def test_large_arrays_round_trip_with_every_compression(
    tmp_path: Path, array: np.ndarray[Any, Any], compress: object
) -> None:
    path = tmp_path / "value.memo"
    dump({"array": array, "other": [1, "two"]}, path, compress=compress)
    restored = load(path)["array"]
    assert restored.dtype == array.dtype and restored.shape == array.shape
    assert np.array_equal(restored, array)
    assert pytest_memo.hash(restored) == pytest_memo.hash(array)
    if array.dtype != object:
        assert restored.flags.writeable


def test_closures_and_lambdas_round_trip(tmp_path: Path) -> None:
    offset = 5
    path = tmp_path / "f.memo"
    dump({"add": lambda x: x + offset}, path)
    assert load(path)["add"](1) == 6


def round_trip(value: Any, compress: object = None) -> Any:
    file = io.BytesIO()
    dump(value, file, compress=compress)
    file.seek(0)
    return load(file)


MEMORYVIEWS = {
    "bytes": memoryview(b"abc"),
    "bytearray": memoryview(bytearray(b"abc")),
    "char": memoryview(b"abcd").cast("c"),
    "int 2x2": memoryview(array.array("i", [1, 2, 3, 4])).cast("B").cast("i", (2, 2)),
    "scalar": memoryview(array.array("q", [5])).cast("B").cast("q", []),
    "big-endian": memoryview(np.arange(6, dtype=">i4").reshape(2, 3)),
    "record": memoryview(np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])),
    "strided": memoryview(b"abcdef")[::2],
    "large": memoryview(np.arange(OUT_OF_BAND_MIN_BYTES, dtype=np.float64)),
}


@pytest.mark.parametrize("compress", [None, "lz4"])
@pytest.mark.parametrize("view", MEMORYVIEWS.values(), ids=MEMORYVIEWS.keys())
def test_memoryviews_come_back_as_memoryviews(view: memoryview, compress: object) -> None:
    # They came back as bytes: a test doing view.cast(...) or view[0] = 1 on the stored
    # value failed where the computed one passed.
    restored = round_trip(view, compress)
    assert type(restored) is memoryview
    assert (restored.format, restored.shape, restored.readonly) == (
        view.format,
        view.shape,
        view.readonly,
    )
    assert restored.tobytes() == view.tobytes()


def test_a_writable_memoryview_stays_writable_when_loaded_memory_mapped(
    tmp_path: Path,
) -> None:
    view = memoryview(np.arange(OUT_OF_BAND_MIN_BYTES, dtype=np.float64))
    dump(view, tmp_path / "view.memo")
    restored = load(tmp_path / "view.memo", mmap_mode="r")
    assert type(restored) is memoryview and not restored.readonly
    assert restored.tobytes() == view.tobytes()


@pytest.mark.parametrize(
    "value",
    [bytearray(b"xy"), array.array("d", [1.0, 2.0]), array.array("u", "ab"), b"xy"],
    ids=["bytearray", "array d", "array u", "bytes"],
)
def test_buffer_types_round_trip_with_their_type(value: Any) -> None:
    restored = round_trip(value)
    assert type(restored) is type(value) and restored == value


def test_memmaps_are_accepted_as_input(tmp_path: Path) -> None:
    source = np.memmap(tmp_path / "raw.bin", dtype=np.float32, mode="w+", shape=(50_000,))
    source[:] = np.arange(50_000)
    dump(source, tmp_path / "value.memo")
    assert np.array_equal(load(tmp_path / "value.memo"), np.arange(50_000, dtype=np.float32))


def big() -> np.ndarray[Any, Any]:
    array = np.arange(OUT_OF_BAND_MIN_BYTES // 8 * 4, dtype=np.float64)
    assert array.nbytes >= OUT_OF_BAND_MIN_BYTES
    return array


def test_mmap_modes(tmp_path: Path) -> None:
    path = tmp_path / "value.memo"
    dump({"a": big()}, path)
    mapped = load(path, mmap_mode="r")["a"]
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert np.array_equal(mapped, big())
    copy_on_write = load(path, mmap_mode="c")["a"]
    copy_on_write[0] = -1.0
    assert load(path)["a"][0] == 0.0  # the file did not change
    writable = load(path, mmap_mode="r+")["a"]
    writable[1] = 42.0
    writable.flush()
    del writable
    assert load(path, mmap_mode="r")["a"][1] == 42.0


def test_compressed_files_load_with_mmap_mode(tmp_path: Path) -> None:
    path = tmp_path / "value.memo"
    dump(big(), path, compress="lz4")
    assert np.array_equal(load(path, mmap_mode="r"), big())


def test_paths_and_open_files(tmp_path: Path) -> None:
    dump([1, 2], str(tmp_path / "a.memo"))
    assert load(str(tmp_path / "a.memo")) == [1, 2]
    with open(tmp_path / "b.memo", "wb") as file:
        dump(big(), file)
    with open(tmp_path / "b.memo", "rb") as file:
        assert np.array_equal(load(file), big())


def test_a_non_seekable_target_is_refused() -> None:
    reader, writer = os.pipe()
    with os.fdopen(writer, "wb") as target, pytest.raises(TypeError, match="seekable"):
        dump(1, target)
    os.close(reader)


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "value.memo"
    dump("old", path)
    with pytest.raises(TypeError):
        dump({"lock": threading.Lock()}, path)
    assert load(path) == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["value.memo"]


def test_an_open_file_is_refused_not_stored_as_a_copy(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with text.open() as handle, pytest.raises(TypeError, match="cannot store an open file"):
        dump({"notes": handle}, tmp_path / "value.memo")
    dump(io.StringIO("in memory"), tmp_path / "buffer.memo")  # in-memory streams are data
    assert load(tmp_path / "buffer.memo").getvalue() == "in memory"


@pytest.mark.parametrize(
    ("compress", "message"),
    [
        ("snappy", "unknown compression 'snappy'"),
        (("lz4", "x"), "compress level for lz4"),
        (("zlib", 12), "compress level for zlib must be an int from 0 to 9"),
        (42, "compress=42 is not understood"),
    ],
)
def test_bad_compress_values_are_clear_errors(
    tmp_path: Path, compress: object, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        dump(1, tmp_path / "x.memo", compress=compress)


def test_a_bad_mmap_mode_is_a_clear_error(tmp_path: Path) -> None:
    dump(1, tmp_path / "x.memo")
    with pytest.raises(ValueError, match="mmap_mode must be one of"):
        load(tmp_path / "x.memo", mmap_mode="w")


# -- damaged files ---------------------------------------------------------------------


@pytest.fixture(params=[None, "lz4"], ids=["raw", "lz4"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    path = tmp_path / "value.memo"
    dump({"array": big(), "small": [1, 2, 3], "text": "x" * 100}, path, compress=request.param)
    return path


def spread(size: int, count: int = 50) -> list[int]:
    return sorted({0, 1, 8, 47, 48, 100, size - 1} | {size * i // count for i in range(count)})


def test_every_truncation_is_detected(stored: Path) -> None:
    data = stored.read_bytes()
    for cut in spread(len(data)):
        stored.write_bytes(data[:cut])
        with pytest.raises(CorruptFileError, match=str(stored)):
            load(stored)


def test_every_flipped_byte_is_detected(stored: Path) -> None:
    data = stored.read_bytes()
    for at in spread(len(data), count=120):
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        stored.write_bytes(bytes(damaged))
        with pytest.raises(CorruptFileError, match=str(stored)):
            load(stored)


def test_mmap_mode_checks_array_data_with_verify(tmp_path: Path) -> None:
    path = tmp_path / "value.memo"
    dump(big(), path)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # inside the raw array data
    path.write_bytes(bytes(damaged))
    with pytest.raises(CorruptFileError):
        load(path, mmap_mode="r", verify=True)
    with pytest.raises(CorruptFileError):
        load(path)


def set_format_version(path: Path, version: int) -> None:
    data = bytearray(path.read_bytes())
    data[8:12] = version.to_bytes(4, "little")
    data[40:48] = xxhash.xxh3_64_intdigest(bytes(data[:40])).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def test_wrong_magic_and_future_versions_are_named(tmp_path: Path) -> None:
    path = tmp_path / "value.memo"
    path.write_bytes(b"not ours at all" * 10)
    with pytest.raises(CorruptFileError, match="not a pytest-memo file"):
        load(path)
    dump([1], path)
    set_format_version(path, FORMAT_VERSION + 1)
    with pytest.raises(CorruptFileError, match=r"newer pytest-memo.*upgrade pytest-memo"):
        load(path)


def test_lz4_files_of_the_first_format_are_refused_by_name(tmp_path: Path) -> None:
    """Format 1 stored lz4 chunks in another layout: never decode them as Blosc's."""
    path = tmp_path / "value.memo"
    dump(big(), path, compress="lz4")
    set_format_version(path, 1)
    with pytest.raises(CorruptFileError, match=r"format version 1.*dump the value again"):
        load(path)
    dump(big(), path)  # uncompressed files of format 1 are the same as today's
    set_format_version(path, 1)
    np.testing.assert_array_equal(load(path), big())


def test_the_error_is_a_value_error() -> None:
    assert issubclass(CorruptFileError, ValueError)


def test_lz4_chunks_are_checked_against_their_size_before_decompressing() -> None:
    codec = codecs.parse_compress("lz4")
    assert codec is not None
    values = np.arange(1000.0)
    packed = codec.pack(values.view(np.uint8), 8)
    restored = np.empty(8000, dtype=np.uint8)
    codec.unpack_into(packed, 8, restored)
    np.testing.assert_array_equal(restored.view(np.float64), values)
    with pytest.raises(ValueError, match="expected 4000"):
        codec.unpack_into(packed, 8, np.empty(4000, dtype=np.uint8))
    with pytest.raises(ValueError):
        codec.unpack_into(b"not a Blosc buffer" * 10, 8, restored)
