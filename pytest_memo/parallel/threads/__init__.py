"""Thread mode: tests run concurrently in threads of this process (see ``runner``)."""

from pytest_memo.parallel.threads.runner import ThreadRunner, warn_of_replaced_protocols

__all__ = ["ThreadRunner", "warn_of_replaced_protocols"]
