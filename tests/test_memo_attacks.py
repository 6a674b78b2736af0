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


def test_fixture_method_sees_what_setup_method_set_on_self(suite: MemoSuite) -> None:
    # A fixture defined in a test class runs with the test's instance as self: what
    # setup_method stored there is data its value depends on.
    suite.write(
        "test_it.py",
        """
        import pytest
        from memo_log import record

        class TestIt:
            def setup_method(self):
                self.n = 3

            def double(self):
                return self.n * 2

            @pytest.fixture
            @pytest.mark.memo
            def data(self):
                record("data")
                return self.double()

            def test_data(self, data):
                assert data == self.n * 2
        """,
    )
    suite.run().assert_outcomes(passed=1)
    suite.replace("test_it.py", "self.n = 3", "self.n = 4")
    suite.run().assert_outcomes(passed=1)
    suite.replace("test_it.py", "self.n = 4", "self.n = 3")
    suite.run().assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]


def test_fixture_method_whose_self_cannot_be_hashed_is_computed_with_a_warning(
    suite: MemoSuite,
) -> None:
    suite.write(
        "test_it.py",
        """
        import threading
        import pytest

        class TestIt:
            def setup_method(self):
                self.lock = threading.Lock()

            @pytest.fixture
            @pytest.mark.memo
            def data(self):
                return 1

            def test_data(self, data):
                assert data == 1
        """,
    )
    result = suite.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*fixture 'data' runs with the test's instance as self*"])


def test_options_read_through_pytestconfig_enter_the_key(suite: MemoSuite) -> None:
    # pytestconfig was refused as "different on every run", with the advice to ignore it;
    # ignored, the option it reads stayed out of the key and --size=2 got the size-1 value.
    suite.write(
        "conftest.py",
        """
        def pytest_addoption(parser):
            parser.addoption("--size", default="1")

        @pytest.fixture
        @pytest.mark.memo
        def data(pytestconfig):
            record("data")
            return int(pytestconfig.getoption("size")) * 10
        """,
    )
    suite.write(
        "test_it.py",
        "def test_data(data, pytestconfig):\n"
        "    assert data == int(pytestconfig.getoption('size')) * 10\n",
    )
    for size in ("1", "2", "2", "1"):
        suite.run(f"--size={size}").assert_outcomes(passed=1)
    assert suite.calls() == ["data", "data"]
