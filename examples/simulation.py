"""Project code the fixtures call: editing it invalidates their stored values."""

from __future__ import annotations

import numpy as np


def simulate_measurements(samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((samples, 2))
    # Deliberately heavy, like a real simulation: smooth the walk with many passes.
    walk = np.cumsum(steps, axis=0)
    for _ in range(25):
        walk = 0.5 * walk + 0.25 * (np.roll(walk, 1, axis=0) + np.roll(walk, -1, axis=0))
    return walk


def fit_least_squares(data: np.ndarray, degree: int) -> np.ndarray:
    x = np.linspace(-1.0, 1.0, len(data))
    design = np.vander(x, degree + 1)
    coefficients, *_ = np.linalg.lstsq(design, data[:, 0], rcond=None)
    for _ in range(3):  # refine: the expensive part of a real fit
        residual = data[:, 0] - design @ coefficients
        correction, *_ = np.linalg.lstsq(design, residual, rcond=None)
        coefficients = coefficients + correction
    return coefficients
