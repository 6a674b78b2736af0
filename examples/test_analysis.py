from __future__ import annotations

import numpy as np
import pytest


def test_measurements_shape(measurements: np.ndarray) -> None:
    assert measurements.shape == (4_000_000, 2)


def test_measurements_are_finite(measurements: np.ndarray) -> None:
    assert np.isfinite(measurements).all()


@pytest.mark.parametrize("column", [0, 1])
def test_walk_is_smooth(measurements: np.ndarray, column: int) -> None:
    steps = np.diff(measurements[1000:-1000, column])  # the ends wrap around
    assert np.abs(steps).std() < 0.5  # raw steps have a standard deviation of 1


def test_model_has_one_coefficient_per_degree(model: np.ndarray) -> None:
    assert model.ndim == 1 and len(model) in (4, 6)


def test_model_fits_better_than_a_constant(model: np.ndarray, measurements: np.ndarray) -> None:
    x = np.linspace(-1.0, 1.0, len(measurements))
    residual = measurements[:, 0] - np.polyval(model, x)
    assert residual.var() <= measurements[:, 0].var()
