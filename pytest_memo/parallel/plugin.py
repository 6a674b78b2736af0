"""pytest hooks of the parallel runner: ``--par`` and its ``--par-*`` options."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memo.core.cpus import usable_cpus
from pytest_memo.parallel import nodes, schedule, spawn
from pytest_memo.pytest_compat import higher_scoped_params, tmp_path_factory
from pytest_memo.timing.plugin import recorded_durations

if TYPE_CHECKING:
    from pytest_memo.parallel.scheduler import Scheduler

THREAD_LIMIT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _workers(text: str) -> int:
    if text == "auto":
        return usable_cpus()
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise pytest.UsageError(f"--par takes a number of workers or 'auto', got {text!r}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("par", "parallel runner (pytest-memo)")
    group.addoption(
        "--par",
        default=None,
        metavar="N",
        help="run tests on N workers ('auto': one per usable CPU; 0 or 1: serially)",
    )
    group.addoption(
        "--par-mode",
        default=None,
        choices=("process", "thread"),
        help="workers are forked processes (default) or threads of this process",
    )
    group.addoption(
        "--par-dist",
        default="load",
        choices=(*PAR_DIST_MODES, *XDIST_DIST_MODES),
        help="load: spread tests one by one (default); scope: keep each module and class "
        "on one worker, so its fixtures are set up once; file: each module; "
        "pytest-xdist's names are accepted too (loadscope, loadfile, loadgroup, worksteal)",
    )
    if importlib.util.find_spec("xdist") is None:
        # pytest-xdist's --dist, for suites whose options or habits carry it: with --par
        # it names the same modes (pytest-xdist's own option when it is installed).
        group.addoption(
            "--dist",
            dest="dist",
            default="no",
            choices=("no", *XDIST_DIST_MODES),
            help="with --par: as --par-dist (pytest-xdist's names)",
        )
    group.addoption(
        "--par-start",
        default="auto",
        choices=("auto", "fork", "spawn"),
        help="how process workers start: fork (Linux default: no re-collection) or spawn "
        "(new interpreters that collect again; the default where fork is unavailable)",
    )
    group.addoption(
        "--par-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a test that runs longer than SECONDS and replace its worker",
    )
    parser.addini("par", "default number of workers for --par", default="")
    parser.addini("par_mode", "process or thread", default="process")
    parser.addini(
        "par_serial",
        "tests (node id patterns) that must run while no other test runs, as if marked serial",
        type="linelist",
    )


# --par-dist's own modes, and pytest-xdist's --dist modes as the ones they amount to
# (xdist_group marks are honoured in every mode, so "loadgroup" is "load").
PAR_DIST_MODES = ("load", "scope", "file")
XDIST_DIST_MODES = {"load": "load", "loadscope": "scope", "loadfile": "file"} | {
    "loadgroup": "load",
    "worksteal": "load",
}


def worker_count(config: pytest.Config) -> int:
    if hasattr(config, "workerinput"):
        return 0  # a pytest-xdist worker: xdist distributes this run
    text = config.getoption("par") or config.getini("par") or "0"
    return _workers(str(text).strip())


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    # Cap the thread pools of numeric libraries before test code imports them: with N
    # workers each using every core, the machine would be oversubscribed N times.
    text = getattr(early_config.known_args_namespace, "par", None) or "0"
    try:
        workers = _workers(str(text))
    except pytest.UsageError:
        return  # reported properly in pytest_configure
    if workers > 1:
        threads = str(max(1, usable_cpus() // workers))
        for variable in THREAD_LIMIT_VARIABLES:
            os.environ.setdefault(variable, threads)


def pytest_sessionstart(session: pytest.Session) -> None:
    if worker_count(session.config) > 1:
        _disable_benchmarks(session.config)


def _disable_benchmarks(config: pytest.Config) -> None:
    """pytest-benchmark disables itself, and says so, when it sees pytest-xdist distribute
    tests (``--dist``, which ``--par`` leaves alone: xdist would start its own workers),
    as timings taken next to other workers mean little: the same, for ``--par``.
    (Spawned workers have xdist's ``PYTEST_XDIST_WORKER``, which it reads itself.)"""
    benchmarks = config.pluginmanager.get_plugin("pytest-benchmark")
    if benchmarks is None or not hasattr(benchmarks, "xdist_warning"):
        return
    if benchmarks.disabled or benchmarks.skip:
        return
    if benchmarks.only:
        raise pytest.UsageError(
            "--benchmark-only: benchmarks cannot run with --par (pytest-benchmark disables "
            "them when tests run in parallel); run them with --par=0"
        )
    benchmarks.xdist_warning = True  # its warning at the end, as under pytest-xdist
    benchmarks.disabled = True


def pytest_collection_finish(session: pytest.Session) -> None:
    # Here, not when the run starts: warnings of collection time reach the summary.
    if worker_count(session.config) > 1 and _mode(session.config) == "thread":
        from pytest_memo.parallel.threads import check_plugins

        check_plugins(session)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: with --par, run this test while no other test runs")
    nodes.register_fixtures(config)
    if not any(config.pluginmanager.has_plugin(name) for name in ("xdist", "xdist.plugin")):
        config.addinivalue_line(
            "markers",
            "xdist_group(name): with --par, run the tests of one group on one worker, "
            "in order (as pytest-xdist's --dist loadgroup)",
        )
    workers = worker_count(config)
    _warn_of_idle_options(config, workers)
    if workers <= 1:
        return
    _settle_xdist_options(config)
    if worker_count(config) <= 1:
        return
    if config.getoption("par_timeout") and _mode(config) == "thread":
        raise pytest.UsageError(
            "--par-timeout needs --par-mode=process: a test running in a thread cannot be stopped"
        )
    reason = _needs_serial_run(config)
    if reason:
        config.option.par = "0"
        config.issue_config_time_warning(
            pytest.PytestWarning(f"--par: running serially, as {reason}"), stacklevel=2
        )


# Options of process workers, with their defaults: given otherwise, they do something
# only with --par, and only in process mode (--par-mode only with --par).
PROCESS_OPTIONS = {"par_dist": "load", "par_start": "auto", "par_timeout": None}


def _warn_of_idle_options(config: pytest.Config, workers: int) -> None:
    """Say which --par-* options given have no effect in this run."""
    if spawn.is_spawned_worker():
        return  # run with --par=0 and the main process's options: they are not idle there
    given = {
        name: value
        for name, default in {"par_mode": None, **PROCESS_OPTIONS}.items()
        if (value := config.getoption(name)) != default
    }
    if workers <= 1:
        idle, why = list(given), "without --par=N (N > 1) the run is serial"
    elif _mode(config) == "thread":
        idle, why = [name for name in given if name in PROCESS_OPTIONS], "in thread mode"
        idle = [name for name in idle if name != "par_timeout"]  # a usage error, below
    else:
        return
    for name in idle:
        option = "--" + name.replace("_", "-")
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(f"{option}={given[name]} has no effect: {why}"),
            stacklevel=2,
        )


def _settle_xdist_options(config: pytest.Config) -> None:
    """pytest-xdist's -n on the command line beats an ini file's ``par`` (pytest-xdist
    runs, --par does not); with --par itself, it is a usage error.  xdist's --dist,
    given with --par and no -n, chooses --par-dist's mode."""
    if getattr(config.option, "numprocesses", None):
        if config.getoption("par") is None:
            config.option.par = "0"
            return
        raise pytest.UsageError(
            "--par and pytest-xdist's -n both distribute tests: use one of them"
        )
    dist = getattr(config.option, "dist", "no")
    if dist in (None, "no"):
        return
    if dist not in XDIST_DIST_MODES:
        raise pytest.UsageError(
            f"--dist {dist} has no --par equivalent; --par distributes with "
            f"--par-dist={'/'.join(PAR_DIST_MODES)} (or --dist "
            f"{'/'.join(XDIST_DIST_MODES)})"
        )
    config.option.par_dist = XDIST_DIST_MODES[dist]


def _needs_serial_run(config: pytest.Config) -> str | None:
    if config.getoption("usepdb", False) or config.getoption("trace", False):
        return "--pdb and --trace need one process"
    if any(config.getoption(name, False) for name in ("setupshow", "setuponly", "setupplan")):
        return (
            "--setup-show, --setup-only and --setup-plan list fixtures as one process sets them up"
        )
    if (
        config.pluginmanager.has_plugin("syrupy")
        and not config.pluginmanager.has_plugin("xdist")
        and _mode(config) == "process"
    ):
        return (
            "syrupy gathers what its workers did only where pytest-xdist is installed "
            "(without it, --snapshot-update would delete snapshots that other workers used)"
        )
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    workers = worker_count(config)
    if workers <= 1:
        return None
    return f"par: {workers} workers ({_mode(config)} mode)"


def _mode(config: pytest.Config) -> str:
    return str(config.getoption("par_mode") or config.getini("par_mode") or "process")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    config = session.config
    if spawn.is_spawned_worker():
        spawn.serve(session)  # exits when the controller is done
    workers = worker_count(config)
    failed_collection = session.testsfailed and not config.option.continue_on_collection_errors
    if workers <= 1 or failed_collection or config.option.collectonly or not session.items:
        return None  # pytest's own loop reports collection errors and runs serially
    recorded = recorded_durations(config)
    expected = [recorded.get(item.nodeid, 0.0) for item in session.items]
    given = _order_is_given(config)
    order = schedule.order(
        session.items,
        expected,
        keep_order=given is not None,
        workers=workers,
        long_first=given == "shuffled",
    )
    _make_basetemp_once(session)
    from pytest_memo.parallel.once import set_up_in_main_process

    with _sigterm_as_ctrl_c():
        shared_fixtures_done = set_up_in_main_process(session)
        try:
            _run_in_parallel(session, workers, order, expected, given)
        finally:
            shared_fixtures_done()
    if session.shouldfail:
        raise session.Failed(session.shouldfail)
    if session.shouldstop:
        raise session.Interrupted(session.shouldstop)
    return True


def _run_in_parallel(
    session: pytest.Session,
    workers: int,
    order: list[int],
    expected: list[float],
    given: str | None,
) -> None:
    config = session.config
    if _mode(config) == "thread":
        from pytest_memo.parallel.threads import ThreadRunner

        runner = ThreadRunner(session, workers, order)
        config.stash[RAN_ALONE] = runner.alone_summary()
        runner.run()
    else:
        from pytest_memo.parallel.controller import Controller

        controller = Controller(
            session,
            workers,
            order,
            timeout=config.getoption("par_timeout"),
            spawn=_use_spawn(config),
            expected=expected,
            scheduler=_scheduler(session, workers, order, expected, given),
        )
        controller.run()


RAN_ALONE = pytest.StashKey[str]()  # thread mode: the line on the tests that ran alone


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if ran_alone := config.stash.get(RAN_ALONE, ""):
        terminalreporter.write_line(ran_alone)


TEMPORARY_DIRECTORY_FIXTURES = frozenset(
    ("tmp_path", "tmpdir", "tmp_path_factory", "tmpdir_factory")
)


def _make_basetemp_once(session: pytest.Session) -> None:
    """Create pytest's base temporary directory before the workers start, to share it.

    Made by each worker when it first needs it, there would be one per worker (each one
    locked, until pytest's clean-up considers it abandoned days later), and with
    --basetemp each worker would empty the directory that the others' tests were using.
    Spawned workers each get a directory of their own inside it, as --basetemp.
    """
    factory = tmp_path_factory(session.config)
    if factory is None:
        return
    used = any(
        TEMPORARY_DIRECTORY_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        for item in session.items
    )
    if used or session.config.option.basetemp:
        # Spawned workers are told to use directories inside it (they cannot inherit it).
        session.config.stash[spawn.SHARED_BASETEMP] = factory.getbasetemp()


def _use_spawn(config: pytest.Config) -> bool:
    start = config.getoption("par_start")
    if start == "auto":
        return not hasattr(os, "fork") or sys.platform == "darwin"
    return bool(start == "spawn")


def _scheduler(
    session: pytest.Session,
    workers: int,
    order: list[int],
    expected: list[float],
    given: str | None,
) -> Scheduler[Any]:
    """The process runner's scheduler: ``xdist_group`` groups and --par-dist's scopes
    kept together, tests marked ``serial`` alone, and lanes of the tests sharing the
    parameters of fixtures wider than a test (pytest orders them so)."""
    from pytest_memo.parallel.scheduler import Scheduler  # only for --par runs

    config = session.config
    items = session.items
    patterns = config.getini("par_serial")
    alone = [index for index, item in enumerate(items) if schedule.marked_serial(item, patterns)]
    keys = [higher_scoped_params(item) for item in items]
    dist = str(config.getoption("par_dist"))
    groups = [schedule.group_name(item) for item in items]
    units = schedule.units(items, order, XDIST_DIST_MODES.get(dist, dist), groups, keys, alone)
    return Scheduler(
        units,
        expected,
        workers,
        keys=keys,
        alone=alone,
        in_order=given is not None,
        long_first=given != "exact",
    )


def _order_is_given(config: pytest.Config) -> str | None:
    """Whether the order is chosen by a plugin: "exact" for --ff, --nf and --sw (kept as
    it is), "shuffled" for pytest-randomly (kept, but long tests first); else None."""
    if any(getattr(config.option, name, False) for name in ("failedfirst", "newfirst", "stepwise")):
        return "exact"
    if config.pluginmanager.has_plugin("randomly") and config.getoption(
        "randomly_reorganize", True
    ):
        return "shuffled"
    return None


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (sent by ``timeout``, CI runners, IDEs) ends the run as Ctrl-C does, in both
    modes and during the once-per-run fixtures' setup: the workers and what their tests
    started are stopped, the shared fixtures torn down, and the summary says what ran."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):  # someone else's handler: theirs to keep
        yield
        return
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
