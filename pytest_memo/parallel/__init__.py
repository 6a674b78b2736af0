"""The parallel runner: ``pytest --par=N``."""
