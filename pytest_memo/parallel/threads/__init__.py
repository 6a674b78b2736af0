"""Thread mode: tests run concurrently in threads of this process (rules: ``runner``).

- ``runner``: the worker threads, the main thread replaying their reports, and the order
  in which everything below is put in place for the run and taken away after it.
- ``protocol``: one test's setup, call and teardown in a worker thread.
- ``plugins``: what other plugins would do that thread mode cannot: warned of, or refused.
- ``gate``: which tests run alone, and the gate that lets them.
- ``fixtures``: fixture values kept per test, class, module and parameter.
- ``shims``: a setup state per thread; shared fixtures torn down at the end.
- ``capture``, ``logs``, ``warnings``, ``assertions``: output, log records, warnings and assertion
  explanations kept with the test of the thread that produced them.
"""

from pytest_memo.parallel.threads.plugins import check_plugins
from pytest_memo.parallel.threads.protocol import warn_of_replaced_protocols
from pytest_memo.parallel.threads.runner import ThreadRunner

__all__ = ["ThreadRunner", "check_plugins", "warn_of_replaced_protocols"]
