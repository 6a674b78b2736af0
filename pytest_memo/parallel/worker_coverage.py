"""Coverage.py measurement in forked workers (pytest-cov's ``--cov``, ``coverage run``).

A forked worker inherits the main process's running measurement, but what the worker
records would die with it: measurements reach their data file only when saved, and the
main process saves its own.  (A spawned worker is pytest again, where pytest-cov starts a
measurement that would report, or not, when the worker exits.)  So each worker is given a
data file of its own, saved before it exits and combined into the main process's
measurement once the workers are done: the report is the one a serial run gives.

coverage.py has no public call to point a running measurement at another data file; this
uses two attributes that have held it since coverage 5, and checks they are there.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

UNSUPPORTED = (
    "pytest-memo: this coverage.py version cannot be told to record --par workers on their "
    "own, so the coverage report leaves out the tests they ran; use --par-mode=thread, or "
    "a coverage.py version from 5.0 on"
)


class WorkerCoverage:
    """The main process's measurement and the directory its workers save into."""

    def __init__(self, measurement: Any, directory: Path | None = None) -> None:
        self.measurement = measurement
        self.directory = directory or Path(tempfile.mkdtemp(prefix="pytest-memo-coverage-"))

    @classmethod
    def of_this_process(cls, directory: Path | None = None) -> WorkerCoverage | None:
        """The running measurement, if coverage.py is measuring this process.

        ``directory``: where workers save (a spawned worker is told the main process's).
        """
        module = sys.modules.get("coverage")  # never imported here: only if already in use
        current = getattr(getattr(module, "Coverage", None), "current", None)
        measurement = current() if callable(current) else None
        if measurement is None:
            return None
        collector = getattr(measurement, "_collector", None)
        if not (
            hasattr(measurement, "_data")
            and hasattr(collector, "use_data")
            and hasattr(collector, "flush_data")
        ):
            warnings.warn(UNSUPPORTED, stacklevel=2)
            return None
        return cls(measurement, directory)

    def record_this_worker(self) -> None:
        """In a worker: record into a data file of this worker's from now on."""
        data_class = sys.modules["coverage"].CoverageData
        data = data_class(basename=str(self.directory / f"worker-{os.getpid()}"))
        self.measurement._data = data
        self.measurement._collector.use_data(data, self.measurement.config.context)

    def save_this_worker(self) -> None:
        """In a worker, before it exits: write what it recorded."""
        self.measurement._collector.flush_data()

    def combine_workers(self) -> None:
        """In the main process, once the workers are gone: add what they recorded."""
        try:
            files = sorted(str(path) for path in self.directory.iterdir())
            if files:
                self.measurement.combine(data_paths=files)  # and deletes them
        except Exception as error:  # a worker killed while saving: report, lose only that
            warnings.warn(
                f"pytest-memo: the coverage recorded by --par workers could not be combined "
                f"({error}); the coverage report leaves out the tests they ran",
                stacklevel=2,
            )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
