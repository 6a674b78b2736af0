"""Exceptions that pytest-memo raises for users to catch."""

from __future__ import annotations


class CorruptFileError(ValueError):
    """A file is not a pytest-memo file, is damaged, or needs a newer pytest-memo.

    The message names the file and what is wrong with it.
    """
