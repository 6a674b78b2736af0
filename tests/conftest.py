"""Fixtures shared by the test modules in this directory."""

from __future__ import annotations

from memo_suite import suite

__all__ = ["suite"]
