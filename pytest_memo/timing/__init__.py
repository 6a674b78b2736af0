"""Test durations of earlier runs, and what uses them outside the runner: ``--shard``."""
