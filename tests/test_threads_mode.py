"""Thread mode end to end: shared fixtures, logs per test, which tests run alone and why."""

from __future__ import annotations

import pytest

FLAGS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
THREADS = (*FLAGS, "--par=2", "--par-mode=thread")


def test_an_unparametrized_session_fixture_beside_a_parametrized_one_is_made_once(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(
        """
        import pytest

        def setup(what):
            with open("setups.txt", "a") as log:
                log.write(what + "\\n")

        @pytest.fixture(scope="session")
        def shared():
            setup("shared")

        @pytest.fixture(scope="session", params=[1, 2, 3])
        def number(request):
            setup(f"number {request.param}")
            return request.param

        @pytest.fixture(scope="session")
        def doubled(number):  # depends on the parameter: one per parameter
            setup(f"doubled {number}")
            return 2 * number
        """
    )
    pytester.makepyfile(
        """
        def test_numbers(shared, number, doubled):
            assert doubled == 2 * number
        """
    )
    result = pytester.runpytest_subprocess(*THREADS)
    result.assert_outcomes(passed=3)
    setups = sorted((pytester.path / "setups.txt").read_text().splitlines())
    assert setups == [
        "doubled 1",
        "doubled 2",
        "doubled 3",
        "number 1",
        "number 2",
        "number 3",
        "shared",
    ]
