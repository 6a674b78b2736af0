"""Signed entries: with PYTEST_MEMO_SECRET set, nothing unsigned or foreign-signed is unpickled."""

from __future__ import annotations

import pytest
from memo_suite import MemoSuite

import pytest_memo

CONFTEST = """
@pytest.fixture
@pytest.mark.memo
def data():
    record("data")
    return {"answer": 42}
"""
TEST = "def test_data(data):\n    assert data == {'answer': 42}\n"


@pytest.fixture
def signed(suite: MemoSuite, monkeypatch: pytest.MonkeyPatch) -> MemoSuite:
    suite.write("conftest.py", CONFTEST)
    suite.write("test_it.py", TEST)
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    return suite


def forge(suite: MemoSuite, value: object) -> None:
    """Replace the stored value by another, in a perfectly valid file (checksums and all)."""
    (entry,) = suite.entries()
    info, _ = pytest_memo.load(entry)
    pytest_memo.dump((info, value), entry)


def test_signed_entries_hit_and_carry_a_signature(signed: MemoSuite) -> None:
    signed.run().assert_outcomes(passed=1)
    signed.run().assert_outcomes(passed=1)
    assert signed.calls() == ["data"]
    (entry,) = signed.entries()
    assert entry.with_suffix(".sig").exists()


def test_a_tampered_entry_is_never_served(signed: MemoSuite) -> None:
    signed.run().assert_outcomes(passed=1)
    forge(signed, {"answer": "forged"})
    result = signed.run()
    result.assert_outcomes(passed=1, warnings=1)  # the test saw the real value
    result.stdout.fnmatch_lines(["*signature does not match PYTEST_MEMO_SECRET*"])
    assert signed.calls() == ["data", "data"]
    signed.run().assert_outcomes(passed=1)  # re-signed: a hit again
    assert signed.calls() == ["data", "data"]


def test_an_entry_signed_with_another_secret_is_recomputed(
    signed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed.run().assert_outcomes(passed=1)
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "another secret")
    result = signed.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*signature does not match*"])
    assert signed.calls() == ["data", "data"]


def test_an_unsigned_entry_is_refused_when_a_secret_is_set(
    signed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_MEMO_SECRET")
    signed.run().assert_outcomes(passed=1)
    assert not signed.entries()[0].with_suffix(".sig").exists()
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    result = signed.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*not signed, and PYTEST_MEMO_SECRET is set*"])
    assert signed.calls() == ["data", "data"]


def test_without_a_secret_signatures_are_not_required(
    signed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed.run().assert_outcomes(passed=1)
    monkeypatch.delenv("PYTEST_MEMO_SECRET")
    signed.run().assert_outcomes(passed=1)
    assert signed.calls() == ["data"]
    # ...which is exactly the risk of an unsigned shared store: a valid forged file is served.
    forge(signed, {"answer": 42, "forged": True})
    signed.write("test_it.py", "def test_data(data):\n    assert 'forged' in data\n")
    signed.run().assert_outcomes(passed=1)
