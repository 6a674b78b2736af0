"""The on-disk format: cloudpickle protocol 5 with large buffers out of band.

Layout of a file (all integers little-endian)::

    preamble   48 bytes: magic, format version, flags, metadata offset and length,
               xxh3-64 of the metadata, xxh3-64 of the preamble's first 40 bytes
    sections   the pickle stream, then one section per out-of-band buffer, each starting
               at a 64-byte boundary, zero-padded; raw or compressed in independent chunks
    metadata   JSON: codec, and for each section its chunks with their xxh3-64 checksums

Raw buffer sections are byte-for-byte the array's memory, so they can be memory-mapped.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import IO, Any, BinaryIO

import cloudpickle
import numpy as np
import xxhash

from pytest_memo.core import codecs
from pytest_memo.core.codecs import Codec
from pytest_memo.core.errors import CorruptFileError
from pytest_memo.core.files import temporary_beside

__all__ = ["CorruptFileError", "dump", "load"]

MAGIC = b"\x89PYTMEMO"
# 2: lz4 chunks are Blosc buffers (1: python-lz4 blocks of NumPy-shuffled bytes).
FORMAT_VERSION = 2
ALIGNMENT = 64
_PREAMBLE = struct.Struct("<8sIIQQQQ")
# Arrays at least this large travel out of band (raw, aligned, mmap-able); smaller ones
# stay inside the pickle stream, where they cost less than a section of their own.
OUT_OF_BAND_MIN_BYTES = 64 * 1024
COMPRESS_CHUNK_BYTES = 1 << 20
CHECKSUM_CHUNK_BYTES = 16 << 20
MMAP_MODES = ("r", "r+", "c")


PathLike = str | os.PathLike[str]


def _checksum(data: Any) -> int:
    return int(xxhash.xxh3_64_intdigest(data))


# -- pickling ------------------------------------------------------------------


def _rebuild_array(
    buffer: Any, dtype: np.dtype[Any], shape: tuple[int, ...], order: str
) -> np.ndarray[Any, Any]:
    """Inverse of the array reduction below; keeps ``np.memmap`` when loaded memory-mapped."""
    raw = buffer if isinstance(buffer, np.ndarray) else np.frombuffer(buffer, dtype=np.uint8)
    return raw.view(dtype).reshape(shape, order=order)  # type: ignore[call-overload, no-any-return]


def _rebuild_memoryview(array: np.ndarray[Any, Any], format: str, readonly: bool) -> memoryview:
    """Inverse of the memoryview reduction below: a view of the same format, shape and
    read-only-ness (over a new array: what it viewed in the dumping process is gone)."""
    if readonly:
        array.flags.writeable = False
    elif not array.flags.writeable:  # read-only bytes kept in band, or a read-only map
        array = array.copy()
    view = memoryview(array.data)
    if view.format != format:  # numpy spells some formats differently ("c" is "1s")
        with contextlib.suppress(TypeError, ValueError):
            view = view.cast("B").cast(format, array.shape)  # type: ignore[call-overload]
    return view


# The checkout a value is stored from and loaded into (see :func:`rooted`).
_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("root", default=None)


@contextlib.contextmanager
def rooted(root: Path | None) -> Iterator[None]:
    """Within the block, paths inside ``root`` are stored relative to it and loaded into
    the ``root`` of the loading process: checkouts at different places sharing a store
    each get paths into their own checkout.  A value holding ``root`` in any other form
    (a ``str`` path) cannot be dumped: it would point into another checkout."""
    token = _ROOT.set(root)
    try:
        yield
    finally:
        _ROOT.reset(token)


def _rebased(cls: type[PurePath], original: str, relative: str) -> PurePath:
    root = _ROOT.get()
    return cls(original) if root is None else cls(root, relative)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with large arrays sent out of band whatever their layout or dtype."""

    def __init__(self, file: IO[bytes]) -> None:
        self.buffers: list[tuple[pickle.PickleBuffer, int]] = []
        self._itemsizes: dict[int, int] = {}
        super().__init__(file, protocol=5, buffer_callback=self._take_buffer)

    def reducer_override(self, obj: Any) -> Any:
        # Every plain array, small ones too: numpy's own reduction loses the byte order of
        # big-endian datetime64 arrays. Small buffers are then kept in band (_take_buffer).
        if type(obj) in (np.ndarray, np.memmap) and not obj.dtype.hasobject:
            order = "F" if obj.flags.f_contiguous and not obj.flags.c_contiguous else "C"
            raw = obj.ravel(order=order).view(np.uint8)  # copies only if not contiguous
            buffer = pickle.PickleBuffer(raw)
            self._itemsizes[id(buffer)] = obj.dtype.itemsize
            return _rebuild_array, (buffer, obj.dtype, obj.shape, order)
        root = _ROOT.get()
        if root is not None and isinstance(obj, PurePath) and obj.is_absolute():
            with contextlib.suppress(ValueError):
                return _rebased, (type(obj), str(obj), obj.relative_to(root).as_posix())
        if type(obj) is memoryview:
            # pickle cannot store a memoryview and cloudpickle stores its bytes: keep the
            # type, format, shape and read-only-ness, through an array (out of band if large).
            return _rebuild_memoryview, (np.asarray(obj), obj.format, obj.readonly)
        if isinstance(obj, io.IOBase) and not isinstance(obj, io.BytesIO | io.StringIO):
            # cloudpickle would store a snapshot of an open file's text and load a
            # StringIO: another type, detached from the file. Refuse, as pickle does.
            raise TypeError(f"cannot store an open file or stream ({obj!r})")
        return super().reducer_override(obj)

    def _take_buffer(self, buffer: pickle.PickleBuffer) -> bool:
        """pickle's buffer_callback: False keeps the buffer out of band."""
        if buffer.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
            return True
        self.buffers.append((buffer, self._itemsizes.get(id(buffer), 1)))
        return False


# -- writing -------------------------------------------------------------------


@dataclass
class _Writer:
    """Writes sections to a seekable binary file, tracking offsets from the start."""

    file: BinaryIO
    codec: Codec | None
    base: int = 0
    position: int = 0
    sections: list[dict[str, Any]] = field(default_factory=list)

    def write(self, data: Any) -> None:
        self.file.write(data)
        self.position += memoryview(data).nbytes

    def pad(self) -> int:
        padding = -self.position % ALIGNMENT
        self.write(b"\0" * padding)
        return padding

    def section(self, data: memoryview, itemsize: int) -> None:
        start = self.position
        chunks = (
            self._raw_chunks(data)
            if self.codec is None
            else self._compressed_chunks(data, itemsize)
        )
        record = {"offset": start, "size": data.nbytes, "itemsize": itemsize, "chunks": chunks}
        record["pad"] = self.pad()
        self.sections.append(record)

    def _raw_chunks(self, data: memoryview) -> list[list[int]]:
        pieces = [
            data[low : low + CHECKSUM_CHUNK_BYTES]
            for low in range(0, data.nbytes, CHECKSUM_CHUNK_BYTES)
        ]
        chunks = []
        # The pool checksums the next pieces while this thread writes the current one.
        for piece, checksum in zip(pieces, codecs.map_ordered(_checksum, pieces), strict=True):
            chunks.append([piece.nbytes, piece.nbytes, checksum, 0])
            self.write(piece)
        return chunks

    def _compressed_chunks(self, data: memoryview, itemsize: int) -> list[list[int]]:
        assert self.codec is not None
        codec, width = self.codec, codecs.shuffle_width(itemsize)
        step = COMPRESS_CHUNK_BYTES - COMPRESS_CHUNK_BYTES % width
        pieces = (data[low : low + step] for low in range(0, data.nbytes, step))

        def pack(piece: memoryview) -> tuple[Any, int, int]:
            packed = codec.pack(piece, width)
            if len(packed) >= piece.nbytes:  # incompressible: store as is
                return piece, piece.nbytes, 0
            return packed, piece.nbytes, 1

        chunks = []
        for stored, raw_size, compressed in codecs.map_ordered(pack, pieces):
            chunks.append([len(memoryview(stored)), raw_size, _checksum(stored), compressed])
            self.write(stored)
        return chunks


def _preamble(meta_offset: int, meta: bytes) -> bytes:
    head = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, meta_offset, len(meta), _checksum(meta), 0)
    return head[:-8] + struct.pack("<Q", _checksum(head[:-8]))


def _refuse_root_text(obj: Any, root: Path) -> None:
    """Refuse a str holding the root's path inside plain containers (a str path): loaded in
    another checkout, it would point into this one.  Strings inside other objects are not
    searched."""
    text, pending, budget = str(root), [obj], 100_000
    while pending and budget:
        budget -= 1
        item = pending.pop()
        if type(item) is str:
            if text in item:
                raise ValueError(
                    f"it holds the path of this checkout in a str ({item!r}): stores are "
                    "shared between checkouts, where it would point into this one. Return a "
                    "pathlib.Path (stored relative to the rootdir and loaded into each "
                    "checkout) or a path relative to the rootdir"
                )
        elif type(item) is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        elif type(item) in (list, tuple, set, frozenset):
            pending.extend(item)


def _dump_to(obj: Any, file: BinaryIO, codec: Codec | None) -> int:
    root = _ROOT.get()
    if root is not None:
        _refuse_root_text(obj, root)
    stream = io.BytesIO()
    pickler = _Pickler(stream)
    pickler.dump(obj)
    writer = _Writer(file, codec, base=file.tell())
    writer.write(b"\0" * _PREAMBLE.size)
    writer.pad()
    writer.section(stream.getbuffer(), 1)
    del stream
    for buffer, itemsize in pickler.buffers:
        writer.section(buffer.raw(), itemsize)
    codec_meta = None if codec is None else [codec.name, codec.level]
    meta = json.dumps({"codec": codec_meta, "sections": writer.sections}).encode()
    meta_offset = writer.position
    writer.write(meta)
    file.seek(writer.base)
    file.write(_preamble(meta_offset, meta))
    file.seek(writer.base + writer.position)
    return writer.position


def dump(obj: Any, target: PathLike | BinaryIO, compress: object = None) -> int:
    """Serialize ``obj`` to ``target`` (a path or a seekable binary file); return bytes written.

    A path is written through a temporary file in the same directory and renamed into
    place, so readers see either the old file or the complete new one.
    """
    codec = codecs.parse_compress(compress)
    if not isinstance(target, str | os.PathLike):
        if not (hasattr(target, "write") and target.seekable()):
            raise TypeError(f"dump target must be a path or a seekable binary file, got {target!r}")
        return _dump_to(obj, target, codec)
    path = Path(target)
    handle, temporary = temporary_beside(path)
    try:
        with os.fdopen(handle, "wb") as file:
            size = _dump_to(obj, file, codec)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return size


# -- reading -------------------------------------------------------------------


@dataclass
class _Reader:
    """Reads one file: checks the preamble and metadata, then restores the sections."""

    file: BinaryIO
    name: str
    mmap_mode: str | None
    verify: bool
    base: int = 0
    codec: Codec | None = None
    sections: list[dict[str, Any]] = field(default_factory=list)
    meta_offset: int = 0
    _mapped: np.memmap[Any, Any] | None = None

    def fail(self, problem: str) -> CorruptFileError:
        return CorruptFileError(f"{self.name}: {problem}")

    def read_exact(self, offset: int, size: int) -> bytes:
        self.file.seek(self.base + offset)
        data = self.file.read(size)
        if len(data) != size:
            raise self.fail(f"truncated: expected {size} bytes at offset {offset}")
        return data

    def open(self) -> None:
        self.base = self.file.tell()
        head = self.file.read(_PREAMBLE.size)
        if len(head) < len(MAGIC) or head[: len(MAGIC)] != MAGIC:
            raise self.fail("not a pytest-memo file (wrong magic bytes)")
        if len(head) < _PREAMBLE.size:
            raise self.fail("truncated inside the header")
        _, version, _, meta_offset, meta_size, meta_sum, head_sum = _PREAMBLE.unpack(head)
        if head_sum != _checksum(head[:-8]):
            raise self.fail("header checksum mismatch: the file is corrupt")
        if version > FORMAT_VERSION:
            raise self.fail(
                f"written in format version {version} by a newer pytest-memo; "
                f"this one reads up to version {FORMAT_VERSION}: upgrade pytest-memo"
            )
        self.meta_offset = meta_offset
        meta = self.read_exact(meta_offset, meta_size)
        if _checksum(meta) != meta_sum:
            raise self.fail("metadata checksum mismatch: the file is corrupt")
        content = json.loads(meta)
        self.codec = None if content["codec"] is None else Codec(*content["codec"])
        if version < 2 and self.codec is not None and self.codec.name == "lz4":
            raise self.fail(
                "compressed with lz4 in format version 1 (python-lz4 chunks), which this "
                "pytest-memo no longer reads: dump the value again"
            )
        self.sections = content["sections"]
        if self.sections:  # the padding between the header and the first section
            gap = self.read_exact(_PREAMBLE.size, self.sections[0]["offset"] - _PREAMBLE.size)
            if gap.strip(b"\0"):
                raise self.fail("non-zero padding after the header: the file is corrupt")

    def restore(self, section: dict[str, Any], memory_map: bool) -> np.ndarray[Any, Any]:
        padding = self.read_exact(section["offset"] + _stored_size(section), section["pad"])
        if padding.strip(b"\0"):
            raise self.fail(f"non-zero padding after the section at offset {section['offset']}")
        if memory_map and self.codec is None:
            return self._mapped_section(section)
        out = self._buffer_for(section["offset"], section["size"])
        if self.codec is None:
            self._read_raw(section, out)
        else:
            self._read_compressed(section, out)
        return out

    def _mapped_section(self, section: dict[str, Any]) -> np.ndarray[Any, Any]:
        if self._mapped is None:
            assert self.mmap_mode is not None
            self._mapped = np.memmap(self.file, dtype=np.uint8, mode=self.mmap_mode)  # type: ignore[call-overload]
        start = self.base + section["offset"]
        view = self._mapped[start : start + section["size"]]
        if self.verify:
            self._check_raw(section, view)
        return view

    def read_into(self, offset: int, out: np.ndarray[Any, Any]) -> None:
        """Fill ``out`` from the file, straight into its memory (no intermediate bytes)."""
        self.file.seek(self.base + offset)
        view = out.data
        filled = 0
        while filled < out.nbytes:
            count = self.file.readinto(view[filled:])  # type: ignore[attr-defined]
            if not count:
                raise self.fail(f"truncated inside the section at offset {offset}")
            filled += count

    def _buffer_for(self, offset: int, size: int) -> np.ndarray[Any, Any]:
        """An empty buffer whose address has the same offset within a page as the data in
        the file: copying from the page cache to a buffer 4 KiB out of step with its
        source runs at half speed on common CPUs (4K aliasing)."""
        spare = np.empty(size + 4096, dtype=np.uint8)
        start = (self.base + offset - spare.ctypes.data) % 4096
        return spare[start : start + size]

    def _read_raw(self, section: dict[str, Any], out: np.ndarray[Any, Any]) -> None:
        """Read chunk by chunk; the pool checks each chunk while the next one is read."""
        offset = section["offset"]

        def read() -> Iterator[tuple[int, int, int, np.ndarray[Any, Any]]]:
            low = 0
            for index, (size, _, checksum, _) in enumerate(section["chunks"]):
                self.read_into(offset + low, out[low : low + size])
                yield index, low, checksum, out[low : low + size]
                low += size

        def check(job: tuple[int, int, int, np.ndarray[Any, Any]]) -> None:
            index, low, checksum, data = job
            if _checksum(data) != checksum:
                raise self._chunk_error(section, index, low)

        for _ in codecs.map_ordered(check, read()):
            pass

    def _check_raw(self, section: dict[str, Any], data: np.ndarray[Any, Any]) -> None:
        low = 0
        for index, (size, _, checksum, _) in enumerate(section["chunks"]):
            if _checksum(data[low : low + size]) != checksum:
                raise self._chunk_error(section, index, low)
            low += size

    def _read_compressed(self, section: dict[str, Any], out: np.ndarray[Any, Any]) -> None:
        assert self.codec is not None
        codec, width = self.codec, codecs.shuffle_width(section["itemsize"])
        stored = self._buffer_for(section["offset"], _stored_size(section))

        def read() -> Iterator[tuple[int, Any, int, int, int, int]]:
            """Chunks as they are read: the pool decompresses while the next one is read."""
            stored_at = raw_at = 0
            for index, (size, raw_size, checksum, compressed) in enumerate(section["chunks"]):
                data = stored[stored_at : stored_at + size]
                self.read_into(section["offset"] + stored_at, data)
                yield index, data, raw_at, raw_size, checksum, compressed
                stored_at += size
                raw_at += raw_size

        def unpack(job: tuple[int, Any, int, int, int, int]) -> None:
            index, data, raw_at, raw_size, checksum, compressed = job
            if _checksum(data) != checksum:
                raise self._chunk_error(section, index, raw_at)
            target = out[raw_at : raw_at + raw_size]
            if not compressed:
                target[:] = data
                return
            try:
                codec.unpack_into(data, width, target)
            except Exception as error:
                raise self._chunk_error(section, index, raw_at, f" ({error})") from None

        for _ in codecs.map_ordered(unpack, read()):
            pass

    def _chunk_error(
        self, section: dict[str, Any], index: int, at: int, detail: str = ""
    ) -> CorruptFileError:
        return self.fail(
            f"checksum mismatch in chunk {index} of the section at offset "
            f"{section['offset']} (data byte {at}){detail}: the file is corrupt"
        )


def _stored_size(section: dict[str, Any]) -> int:
    return sum(chunk[0] for chunk in section["chunks"])


def _load_from(reader: _Reader) -> Any:
    reader.open()
    try:
        pickled, *buffers = reader.sections
    except ValueError:
        raise reader.fail("metadata lists no pickle stream") from None
    stream = reader.restore(pickled, memory_map=False)
    restored = [
        reader.restore(section, memory_map=reader.mmap_mode is not None) for section in buffers
    ]
    return pickle.loads(stream.data, buffers=restored)


def load(
    source: PathLike | BinaryIO, mmap_mode: str | None = None, verify: bool | None = None
) -> Any:
    """Load an object written by :func:`dump`.

    ``mmap_mode`` (``"r"``, ``"r+"`` or ``"c"``, as in :func:`numpy.load`) maps uncompressed
    arrays instead of reading them: opening costs the same whatever their size.  Every
    checksum is verified, except that memory-mapped array data is only checked when
    ``verify=True`` (checking reads the whole file, which mapping is there to avoid).
    """
    if mmap_mode not in (None, *MMAP_MODES):
        raise ValueError(
            f"mmap_mode must be one of None, {', '.join(MMAP_MODES)}; got {mmap_mode!r}"
        )
    check = mmap_mode is None if verify is None else verify
    if not isinstance(source, str | os.PathLike):
        name = str(getattr(source, "name", repr(source)))
        return _load_from(_Reader(source, name, mmap_mode if _has_fileno(source) else None, check))
    file_mode = "r+b" if mmap_mode == "r+" else "rb"
    with open(source, file_mode, buffering=0) as file:
        return _load_from(_Reader(file, str(source), mmap_mode, check))  # type: ignore[arg-type]


def _has_fileno(source: BinaryIO) -> bool:
    try:
        source.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True


def pickle_stream(file: BinaryIO, name: str) -> bytes:
    """The pickle stream of an open file, checked but neither unpickled nor followed by
    its arrays: what a store reads to list an entry without loading it."""
    reader = _Reader(file, name, None, True)
    reader.open()
    if not reader.sections:
        raise reader.fail("metadata lists no pickle stream")
    return reader.restore(reader.sections[0], memory_map=False).tobytes()


def mappable_layout(file: BinaryIO, name: str) -> tuple[int, int] | None:
    """For an uncompressed file: where its first array section starts and where its
    metadata starts.  What lies outside that range is what loading parses (the header,
    the pickle stream, the metadata); None for a compressed file, which maps nothing."""
    reader = _Reader(file, name, None, True)
    reader.open()
    if reader.codec is not None:
        return None
    first = reader.sections[1]["offset"] if len(reader.sections) > 1 else reader.meta_offset
    return first, reader.meta_offset


def iter_sections(path: PathLike) -> Iterator[dict[str, Any]]:
    """The section records of a file, for diagnostics (``--memo-show`` and tests)."""
    with open(path, "rb") as file:
        reader = _Reader(file, str(path), None, True)
        reader.open()
        yield from reader.sections
