"""Expensive fixtures of the kind real suites have: a simulated dataset and a fitted model.

Both are memoized: the first run computes them (a few seconds), later runs load them from
``.pytest_memo/`` in a few milliseconds, until their code or their inputs change.
"""

from __future__ import annotations

import numpy as np
import pytest
from simulation import fit_least_squares, simulate_measurements


@pytest.fixture(scope="session")
@pytest.mark.memo(mmap=True)
def measurements() -> np.ndarray:
    """A 2-D random walk sampled 4 million times: about 64 MB of float64."""
    return simulate_measurements(samples=4_000_000, seed=42)


@pytest.fixture(scope="session", params=[3, 5])
@pytest.mark.memo
def model(request: pytest.FixtureRequest, measurements: np.ndarray) -> np.ndarray:
    """A polynomial fitted to the measurements, one per degree."""
    return fit_least_squares(measurements, degree=request.param)
