"""The live line: while a memoized value computes for longer than a few seconds, say which
and why (``memo: computing training_set (helpers.build changed)...``), so that a run that
seems stuck explains itself.

The line is written to a duplicate of the terminal's file descriptor, taken before any
test runs: while a fixture computes, pytest captures the process's own output.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

__all__ = ["Progress"]


class Progress:
    def __init__(self, fd: int, after: float) -> None:
        self._fd = fd
        self.after = after

    @classmethod
    def of_terminal(cls, fileno: int, after: float) -> Progress | None:
        try:
            return cls(os.dup(fileno), after)
        except OSError:
            return None

    @contextlib.contextmanager
    def computing(self, name: str, why: str) -> Iterator[None]:
        timer = threading.Timer(self.after, self._say, (f"memo: computing {name} ({why})...",))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _say(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, f"\n{line}\n".encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
