"""Thread mode: tests run concurrently in threads of this process (rules: ``runner``).

- ``runner``: the worker threads, the main thread replaying their reports, and the order
  in which everything below is put in place for the run and taken away after it.
- ``protocol``: one test's setup, call and teardown in a worker thread.
- ``gate``: which tests run alone, and the gate that lets them.
- ``fixtures``: fixture values kept per test, class, module and parameter.
- ``shims``: a setup state per thread; shared fixtures torn down at the end.
- ``capture``, ``warnings``, ``assertions``: output, warnings and assertion
  explanations kept with the test of the thread that produced them.
"""

from pytest_memo.parallel.threads.protocol import warn_of_replaced_protocols
from pytest_memo.parallel.threads.runner import ThreadRunner

__all__ = ["ThreadRunner", "warn_of_replaced_protocols"]
