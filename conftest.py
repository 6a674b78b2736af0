"""Shared test settings for the whole repository."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Property tests allocate arrays and write files: give them time, and keep CI reproducible.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=60,
    derandomize=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")
