"""The terminal output of the main process, written in one go while reports pour in.

pytest's terminal reporter flushes after every report.  In a serial run that costs little;
in the main process of a parallel run, with every core busy running workers, each flush
to a pipe or terminal wakes its reader, which takes this process's core.  Measured with
2000 quick tests at ``--par=2`` on 2 cores, four runs each way: 650-850 involuntary
context switches of the main process against 160-250 with output held, and 0.5-0.8 s
spent replaying reports against 0.26-0.6 s.  So while the controller is busy, what the
reporter writes is held, and written once the controller waits for workers, or every
``MAX_HOLD_SECONDS`` at the latest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import IO, Any

import pytest

from pytest_memo.pytest_compat import set_writer_stream, terminal_writer, writer_stream

__all__ = ["HeldOutput", "held_terminal_output"]

MAX_HOLD_SECONDS = 0.1


class HeldOutput:
    """Stands in for the reporter's stream: keeps what is written until ``release``."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.parts: list[str] = []
        self.released_at = time.monotonic()

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        """The reporter's flush after each report: held until ``release``."""

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno...
        return getattr(self.stream, name)

    def due(self) -> bool:
        return bool(self.parts) and time.monotonic() - self.released_at > MAX_HOLD_SECONDS

    def release(self) -> None:
        """Write what was held, and flush."""
        self.released_at = time.monotonic()
        if not self.parts:
            return
        parts, self.parts = self.parts, []
        try:
            self.stream.write("".join(parts))
        except UnicodeEncodeError:
            # A terminal that cannot show some character: write piece by piece, escaping
            # only the pieces that fail, as pytest's own writer does with each write.
            for part in parts:
                try:
                    self.stream.write(part)
                except UnicodeEncodeError:
                    self.stream.write(part.encode("unicode-escape").decode("ascii"))
        self.stream.flush()


@contextlib.contextmanager
def held_terminal_output(config: pytest.Config) -> Iterator[HeldOutput | None]:
    """Hold the terminal reporter's output for the block (None: nothing to hold)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    writer = terminal_writer(reporter)
    stream = writer_stream(writer)
    if stream is None:  # no terminal reporter, or one whose writer we do not know
        yield None
        return
    held = HeldOutput(stream)
    set_writer_stream(writer, held)
    try:
        yield held
    finally:
        set_writer_stream(writer, stream)
        held.release()
