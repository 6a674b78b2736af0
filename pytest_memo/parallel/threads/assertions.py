"""pytest's assertion explanations ("At index 2 diff: ...") in every thread.

For the length of each test's protocol, pytest's assertion plugin points two module
globals at functions made for that test; rewritten ``assert`` statements call them.
Thread mode runs several tests at once and not that protocol: the globals point at
dispatchers for the run instead, and each thread keeps the functions the plugin made
for its test (the plugin's own protocol wrapper makes them, and is closed at once).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator

import pytest

from pytest_memo.pytest_compat import assertion_hooks, set_assertion_hooks

__all__ = ["ThreadAssertions"]


class ThreadAssertions:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.local = threading.local()
        self.passes_hooked = bool(config.hook.pytest_assertion_pass.get_hookimpls())

    @contextlib.contextmanager
    def installed(self) -> Generator[None, None, None]:
        """The dispatchers, for the block; then what was there, and no config."""
        saved = assertion_hooks()
        try:
            self._install()
            yield
        finally:
            set_assertion_hooks(*saved, config=None)

    def _install(self) -> None:
        # Left unset when no plugin listens: rewritten asserts then skip explaining passes.
        passes = self._assertion_pass if self.passes_hooked else None
        set_assertion_hooks(self._reprcompare, passes, config=self.config)

    def prepare(self, item: pytest.Item) -> None:
        """In the test's thread, before its setup (under the fixture lock)."""
        plugin = self.config.pluginmanager.get_plugin("assertion")
        wrapper = getattr(plugin, "pytest_runtest_protocol", None)
        if wrapper is None:  # -p no:assertion, or --assert=plain
            return
        made = wrapper(item)
        next(made)
        self.local.made = assertion_hooks()
        made.close()
        self._install()  # closing put our dispatchers back, but unset the config

    def _reprcompare(self, op: str, left: object, right: object) -> str | None:
        explain = getattr(self.local, "made", (None, None))[0]
        return explain(op, left, right) if explain is not None else None

    def _assertion_pass(self, lineno: int, orig: str, expl: str) -> None:
        report = getattr(self.local, "made", (None, None))[1]
        if report is not None:
            report(lineno, orig, expl)
