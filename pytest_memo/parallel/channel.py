"""Pickled messages over a pipe between the controller and a forked worker.

multiprocessing's ``Pipe`` and ``wait`` do this too, but importing multiprocessing cost
the main process about 2.5 ms more before it could fork its first worker, and ``wait``
builds a new selector, registering every worker, on each call: the controller calls it
twice per report.  A channel is a pipe end; ``Readiness`` keeps one selector for the whole run.
Spawned workers talk over multiprocessing's authenticated sockets, which offer the same
methods (``MessageChannel``).
"""

from __future__ import annotations

import os
import pickle
import select
import selectors
import struct
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Channel", "MessageChannel", "Readiness", "pipe"]

_HEADER = struct.Struct("!Q")  # the length of the pickle that follows


class MessageChannel(Protocol):
    def send(self, obj: Any) -> None: ...
    def recv(self) -> Any: ...
    def poll(self) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class Channel:
    """One end of a pipe: ``send`` on the writing end, ``recv`` and ``poll`` on the other.

    Reads take exactly one message and nothing more, so a readable descriptor means a
    message (or the end of the pipe) is there.
    """

    def __init__(self, descriptor: int) -> None:
        self._descriptor = descriptor

    def fileno(self) -> int:
        return self._descriptor

    def send(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:  # a pipe may take a large message in parts
            view = view[os.write(self._descriptor, view) :]

    def recv(self) -> Any:
        """The next message; EOFError once the other end is closed."""
        (length,) = _HEADER.unpack(self._read(_HEADER.size))
        return pickle.loads(self._read(length))

    def _read(self, length: int) -> bytes:
        parts = []
        while length:
            part = os.read(self._descriptor, length)
            if not part:
                raise EOFError("the other end of the channel was closed")
            parts.append(part)
            length -= len(part)
        return b"".join(parts)

    def poll(self) -> bool:
        """Whether ``recv`` would return without waiting."""
        return bool(select.select([self._descriptor], [], [], 0)[0])

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1


def pipe() -> tuple[Channel, Channel]:
    """A new pipe: (the end to read from, the end to write to)."""
    reading, writing = os.pipe()
    return Channel(reading), Channel(writing)


T = TypeVar("T")


class Readiness(Generic[T]):
    """Which of the watched channels have a message, each standing for a value ``T``."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def watch(self, channel: MessageChannel, value: T) -> None:
        self._selector.register(channel.fileno(), selectors.EVENT_READ, value)

    def forget(self, channel: MessageChannel) -> None:
        self._selector.unregister(channel.fileno())

    def watch_descriptor(self, descriptor: int, value: T) -> None:
        """Also stand for ``value`` when ``descriptor`` is readable (a process's pidfd)."""
        self._selector.register(descriptor, selectors.EVENT_READ, value)

    def forget_descriptor(self, descriptor: int) -> None:
        self._selector.unregister(descriptor)

    def ready(self, timeout: float | None) -> list[T]:
        """Values of the channels with a message, waiting up to ``timeout`` (None: no limit)."""
        return [key.data for key, _ in self._selector.select(timeout)]

    def close(self) -> None:
        self._selector.close()
