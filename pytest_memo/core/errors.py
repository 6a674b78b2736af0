"""Exceptions that pytest-memo raises for users to catch."""

from __future__ import annotations


class CorruptFileError(ValueError):
    """A file is not a pytest-memo file, is damaged, or needs a newer pytest-memo.

    The message names the file and what is wrong with it.
    """


class MemoWarning(UserWarning):
    """Something went wrong with the store (a damaged entry, a value that cannot be
    stored, a store that cannot be written); the run goes on with computed values.

    Filter it like any warning: ``-W error::pytest_memo.MemoWarning`` in CI.
    """
