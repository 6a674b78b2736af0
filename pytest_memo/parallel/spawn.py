"""Workers started as new interpreters, where ``fork`` is not available or not safe.

A spawned worker is pytest run again with the same arguments: it collects the suite
itself, proves it collected the same test ids as the main process (a digest of the
ids), then serves the controller over a local, authenticated connection exactly as a
forked worker does over its pipes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_memo.parallel.protocol import Hello
from pytest_memo.parallel.report_files import spawned_worker_options

if TYPE_CHECKING:  # imported where used: every pytest run imports this module
    from multiprocessing.connection import Connection

    from pytest_memo.parallel.nodes import WorkerNode
    from pytest_memo.parallel.worker import CaptureFiles
    from pytest_memo.parallel.worker_coverage import WorkerCoverage

__all__ = ["SpawnedWorkers", "collected_digest", "is_spawned_worker", "serve"]

ADDRESS_VARIABLE = "PYTEST_MEMO_PAR_CONTROLLER"
KEY_VARIABLE = "PYTEST_MEMO_PAR_KEY"
OUTPUT_VARIABLE = "PYTEST_MEMO_PAR_OUTPUT"  # the worker's capture files, os.pathsep between
COVERAGE_VARIABLE = "PYTEST_MEMO_PAR_COVERAGE"  # where the worker saves coverage.py data
# The main process's base temporary directory, when it made one before the workers start.
SHARED_BASETEMP = pytest.StashKey[Path]()


def collected_digest(items: Sequence[pytest.Item]) -> str:
    return hashlib.sha256("\n".join(item.nodeid for item in items).encode()).hexdigest()


class SpawnedWorkers:
    """Starts worker interpreters and accepts their connections."""

    def __init__(
        self,
        config: pytest.Config,
        items: Sequence[pytest.Item],
        coverage: WorkerCoverage | None = None,
    ) -> None:
        from multiprocessing.connection import Listener

        from pytest_memo.parallel.worker import keeps_crash_output

        self._key = secrets.token_bytes(32)
        self._listener = Listener(("127.0.0.1", 0), authkey=self._key)
        self._digest = collected_digest(items)
        address = self._listener.address
        self._environment = {
            **os.environ,
            ADDRESS_VARIABLE: f"{address[0]}:{address[1]}",
            KEY_VARIABLE: self._key.hex(),
        }
        if coverage is not None:
            self._environment[COVERAGE_VARIABLE] = str(coverage.directory)
        # The same run, serially: it only collects and then serves.
        self._command = [sys.executable, "-m", "pytest", *config.invocation_params.args, "--par=0"]
        self._command += spawned_worker_options(config) + _choices_of_this_run(config)
        self._basetemp = config.stash.get(SHARED_BASETEMP, None)
        self._spawned = 0
        self._directory = config.invocation_params.dir
        # Its own header and collection lines would repeat the main process's; with -s,
        # tests print straight to the terminal, so then it keeps the terminal.
        capturing = config.getoption("capture") != "no"
        self._output = subprocess.DEVNULL if capturing else None
        # With fd capture, each worker captures into files named here, which this process
        # reads when a test kills its worker.
        self._captures = None
        if keeps_crash_output(config):
            self._captures = tempfile.mkdtemp(prefix="pytest-memo-par-")

    def start(
        self, nodes: Sequence[WorkerNode]
    ) -> list[tuple[subprocess.Popen[bytes], Connection, CaptureFiles | None, WorkerNode]]:
        """Start a worker per node; each has the node's workerinput from the start."""
        from pytest_memo.parallel.nodes import spawned_worker_environment

        processes, outputs, node_of = [], {}, {}
        for node in nodes:
            environment, output = self._environment, self._capture_files()
            environment = {**environment, **spawned_worker_environment(node.workerinput)}
            if output is not None:
                paths = os.pathsep.join(file.name for file in output)
                environment = {**environment, OUTPUT_VARIABLE: paths}
            process = subprocess.Popen(
                self._worker_command(),
                cwd=self._directory,
                env=environment,
                stdout=self._output,
                start_new_session=True,  # a process group of its own, killed as one (hangs)
            )
            processes.append(process)
            outputs[process.pid] = output
            node_of[process.pid] = node
        by_pid = {process.pid: process for process in processes}
        started = []
        for _ in processes:
            self._wait_for_connection(processes)
            connection = self._listener.accept()
            hello: Hello = connection.recv()
            if hello.digest != self._digest:
                for process in processes:
                    process.kill()
                raise pytest.UsageError(
                    "--par: a spawned worker collected other tests than the main process; "
                    "collection must give the same test ids every time (check for random or "
                    "time-dependent parametrization)"
                )
            started.append((by_pid[hello.pid], connection, outputs[hello.pid], node_of[hello.pid]))
        return started

    def _worker_command(self) -> list[str]:
        self._spawned += 1
        if self._basetemp is None:
            return self._command
        # The last --basetemp given wins: a directory of the worker's own, inside the run's.
        return [*self._command, f"--basetemp={self._basetemp / f'worker-{self._spawned}'}"]

    def _capture_files(self) -> CaptureFiles | None:
        if self._captures is None:
            return None
        files = [
            tempfile.NamedTemporaryFile(dir=self._captures, delete=False)  # noqa: SIM115
            for _ in range(2)
        ]
        return files[0], files[1]

    def _wait_for_connection(self, processes: list[subprocess.Popen[bytes]]) -> None:
        """Block until a worker connects; fail clearly if one exits first."""
        listening = self._listener._listener._socket  # type: ignore[attr-defined]
        while not select.select([listening], [], [], 0.2)[0]:
            for process in processes:
                if process.poll() is not None:
                    for other in processes:
                        other.kill()
                    raise pytest.UsageError(
                        f"--par: a spawned worker exited with code {process.returncode} before "
                        f"it could start; run the same command with --par=0 to see why"
                    )

    def close(self) -> None:
        self._listener.close()
        if self._captures is not None:
            shutil.rmtree(self._captures, ignore_errors=True)


def _choices_of_this_run(config: pytest.Config) -> list[str]:
    """Options that make a spawned worker choose as this process did (the last one given
    wins).  pytest-randomly draws a seed per process unless given one: a worker with a seed
    of its own would shuffle its tests into another order, and seed each test differently
    from the run whose seed the header names.  The option tells that it is active, however
    it was loaded (its entry point, ``-p pytest_randomly``, ``pytest_plugins``)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        return [f"--randomly-seed={seed}"]
    return []


def is_spawned_worker() -> bool:
    """Whether this pytest process was started by a controller to serve it."""
    return ADDRESS_VARIABLE in os.environ


def serve(session: pytest.Session) -> None:
    """In a spawned worker: connect, prove the collection, serve until told to stop."""
    from multiprocessing.connection import Client

    from pytest_memo.parallel.processes import die_with_parent
    from pytest_memo.parallel.worker import run_worker

    die_with_parent(os.getppid())  # (hangs: a worker dies with the main process)
    host, _, port = os.environ.pop(ADDRESS_VARIABLE).rpartition(":")
    key = os.environ.pop(KEY_VARIABLE)
    connection = Client((host, int(port)), authkey=bytes.fromhex(key))
    connection.send(Hello(os.getpid(), collected_digest(session.items)))
    paths = os.environ.pop(OUTPUT_VARIABLE, "")
    output = None
    if paths:
        out, err = (open(path, "r+b") for path in paths.split(os.pathsep))  # noqa: SIM115
        output = (out, err)
    coverage = None
    if COVERAGE_VARIABLE in os.environ:
        from pytest_memo.parallel.worker_coverage import WorkerCoverage

        coverage = WorkerCoverage.of_this_process(Path(os.environ.pop(COVERAGE_VARIABLE)))
    run_worker(session, connection, connection, output, coverage, forked=False)  # never returns
