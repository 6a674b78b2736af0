"""Adversarial cases: each test reproduces a defect a user saw (a memoized run giving
other values than a ``--memo-off`` run) and fails on the code before its fix."""

from __future__ import annotations

from memo_suite import MemoSuite


def test_dependency_of_a_fixture_computed_unmemoized_is_keyed_by_its_value(
    suite: MemoSuite,
) -> None:
    # 'label' is memoized for test_plain but cannot be keyed for test_p (an unhashable
    # parameter in its marks), so it is computed there: 'upper' must not reuse the key
    # 'label' had for test_plain and serve test_plain's value.
    suite.write(
        "conftest.py",
        """
        @pytest.fixture
        @pytest.mark.memo
        def label(request):
            return request.node.name

        @pytest.fixture
        @pytest.mark.memo
        def upper(label):
            return label.upper()
        """,
    )
    suite.write(
        "test_it.py",
        """
        import threading
        import pytest

        def test_plain(label, upper):
            assert upper == label.upper() == "TEST_PLAIN"

        @pytest.mark.parametrize("lock", [threading.Lock()])
        def test_p(label, upper, lock):
            assert upper == label.upper() == "TEST_P[LOCK0]"
        """,
    )
    for _ in range(2):
        suite.run("-p", "no:randomly").assert_outcomes(passed=2, warnings=1)
