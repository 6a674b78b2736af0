"""Memoization: keys from code and inputs, ``pytest_memo.cache`` and the memoized-fixture plugin."""
