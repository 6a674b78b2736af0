"""pytest hooks: options, fixture setup from the store, the summary.  Thin on purpose:
the work is done in ``fixture`` and ``store``, which know nothing of these hooks.

The memo machinery (keys, engine, store) is imported and set up when a run first needs
it: at the start when the project has a store or a memo option is given, else when the
first memoized fixture or cached function is met.  A suite that memoizes nothing starts as
quickly as without the plugin (and with ``PYTHONDONTWRITEBYTECODE``, where pytest rewrites
every imported plugin module on every run, the difference is large).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import sys
import threading
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_memo.memoize import current, marker
from pytest_memo.pytest_compat import item_fixture_definitions
from pytest_memo.store.location import (
    DEFAULT_DIRECTORY,
    is_url,
    local_directory,
    project_identity,
    refusal,
)

if TYPE_CHECKING:
    from pytest_memo.memoize.fixture import FixtureMemo
    from pytest_memo.store.local import Store

MEMO = pytest.StashKey["FixtureMemo"]()  # made by _memo(), when the run first needs it
RUN = pytest.StashKey[str]()  # the run's identity (see _run_identity)
BY_NAME = pytest.StashKey[frozenset[str]]()  # the memo_fixtures ini option
CLEAR_ALL = "*all*"
# What pytest-xdist's main process tells its workers (workerinput), and this plugin's key
# in what they send back (workeroutput); --par workers speak the same protocol.
WORKER_RUN = "pytest_memo_run"
WORKER_STORE_UNUSABLE = "pytest_memo_unusable"
WORKER_STORE_READ_ONLY = "pytest_memo_read_only"
WORKER_OUTPUT = "pytest_memo"
# How --par workers started as new interpreters learn the run's identity (forked ones
# inherit it): set in the main process's environment while it runs.
RUN_VARIABLE = "PYTEST_MEMO_RUN"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memo", "memoized fixtures (pytest-memo)")
    group.addoption(
        "--memo-clear",
        nargs="?",
        const=CLEAR_ALL,
        default=None,
        metavar="FIXTURE",
        help="remove all stored values before the run, or only those of FIXTURE",
    )
    group.addoption(
        "--memo-off", action="store_true", help="compute every fixture; do not touch the store"
    )
    group.addoption(
        "--memo-refresh",
        action="store_true",
        help="recompute memoized fixtures and store them again",
    )
    group.addoption(
        "--memo-show",
        nargs="?",
        const="*",
        default=None,
        metavar="GLOB",
        help="list the stored values (of the fixtures whose names match GLOB) and exit; "
        "with -v, the parts of each entry's key",
    )
    group.addoption(
        "--memo-explain",
        action="store_true",
        help="say, for each memoized value computed in the run, what changed since the "
        "earlier entry of the same fixture and parameter",
    )
    group.addoption(
        "--memo-prune",
        action="store_true",
        help="after the run, remove stored values it did not use (all of them only after a "
        "complete run; see the docs)",
    )
    group.addoption(
        "--memo-prune-grace",
        default=None,
        metavar="DURATION",
        help="with --memo-prune and a remote store: remove its entries that no run used "
        "for DURATION (default: 7d; e.g. 12h, 0)",
    )
    group.addoption(
        "--memo-dir",
        default=None,
        help="the store directory (default: .pytest_memo), or a URL of a shared remote store: "
        "s3://bucket/prefix, gs://..., az://..., file://...",
    )
    group.addoption(
        "--memo-read-only",
        action="store_true",
        help="use the stored values but write nothing to the store: no entries, index, "
        "locks or durations (ini: memo_read_only), e.g. in pull-request jobs",
    )
    group.addoption(
        "--memo-max-size",
        default=None,
        metavar="SIZE",
        help="after the run, evict least recently used values beyond SIZE (e.g. 2GB)",
    )
    parser.addini(
        "memo_dir", "the store directory, relative to the rootdir", default=DEFAULT_DIRECTORY
    )
    parser.addini(
        "memo_storage_options",
        "JSON object of fsspec storage options for a memo_dir URL (s3://..., gs://...)",
        default="",
    )
    parser.addini(
        "memo_read_only",
        "use the store without writing to it (as --memo-read-only)",
        type="bool",
        default=False,
    )
    parser.addini(
        "memo_prune_grace",
        "--memo-prune on a remote store removes entries no run used for this long (7d)",
        default="",
    )
    parser.addini("memo_max_size", "evict least recently used values beyond this size", default="")
    parser.addini(
        "memo_project",
        "this project's name in a store that projects share: --memo-prune removes only the "
        "entries it wrote (default: the name in pyproject.toml, else the rootdir's name)",
        default="",
    )
    parser.addini("memo_fixtures", "names of fixtures to memoize without a mark", type="args")
    parser.addini(
        "memo_progress_after",
        "seconds after which a memoized fixture still computing is named on the terminal",
        default="2",
    )


def _store(config: pytest.Config) -> Store:
    from pytest_memo.store import signing
    from pytest_memo.store.local import Store

    location = config.getoption("memo_dir") or config.getini("memo_dir")
    if is_url(location):  # s3://bucket/prefix, file://..., any fsspec URL
        from pytest_memo.store.remote import remote_store  # here: fsspec is optional and slow

        store: Store = remote_store(config, location)
    else:
        directory = local_directory(config.rootpath, location)
        problem = refusal(directory, config.rootpath, f"--memo-dir / memo_dir {location!r}")
        if problem is not None:
            raise pytest.UsageError(problem)
        store = Store(directory, signing=signing.from_environment())
    store.read_only = _read_only(config)
    return store


def _read_only(config: pytest.Config) -> bool:
    """--memo-read-only / memo_read_only: options that write the store are usage errors."""
    if not (config.getoption("memo_read_only") or config.getini("memo_read_only")):
        return False
    for option, name in (
        ("memo_clear", "--memo-clear"),
        ("memo_prune", "--memo-prune"),
        ("memo_max_size", "--memo-max-size"),
    ):
        if config.getoption(option) not in (None, False):
            raise pytest.UsageError(
                f"{name} writes to the store, and --memo-read-only / memo_read_only says "
                f"this run must not: drop one of them"
            )
    return True


def _max_size(config: pytest.Config) -> int | None:
    text = config.getoption("memo_max_size") or config.getini("memo_max_size")
    if not text:
        return None
    from pytest_memo.memoize.stats import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise pytest.UsageError(f"--memo-max-size / memo_max_size: {error}") from None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("memo_show") is None:
        return None
    # wrap_session configures the terminal, as --cache-show does
    from pytest_memo.pytest_compat import wrap_session

    return wrap_session(config, _show)


def _show(config: pytest.Config, session: pytest.Session) -> int:
    from pytest_memo.memoize import explain
    from pytest_memo.memoize.stats import listing_table, listing_totals
    from pytest_memo.store.local import StoreRepairWarning

    pattern = config.getoption("memo_show")
    store = _store(config)
    try:
        with warnings.catch_warnings(record=True) as repairs:
            warnings.simplefilter("always", StoreRepairWarning)
            entries = [
                entry for entry in store.listing() if fnmatch.fnmatchcase(entry.fixture, pattern)
            ]
        manifests = {entry.key: explain.read_manifest(store, entry.key) for entry in entries}
    finally:
        store.close()
    params = {
        key: str(manifest.parts["param"][1])
        for key, manifest in manifests.items()
        if manifest is not None and "param" in manifest.parts
    }
    entries.sort(key=lambda entry: (entry.fixture, params.get(entry.key, ""), -entry.last_used))
    writer = config.get_terminal_writer()
    for repair in repairs:
        writer.line(f"{type(repair.message).__name__}: {repair.message}", yellow=True)
    writer.sep("-", f"pytest-memo store: {store.root}")
    if not entries:
        writer.line("(empty)" if pattern == "*" else f"no stored values match {pattern!r}")
        return 0
    verbose = config.get_verbosity() > 0
    header, *rows = listing_table(entries, params=params)
    writer.line(header)
    for entry, row in zip(entries, rows, strict=True):
        writer.line(row)
        if verbose:
            for line in explain.detail_lines(manifests[entry.key]):
                writer.line(f"    {line}")
    writer.line(listing_totals(entries))
    return 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "memo(version=None, ignore=(), depends=(), compress=None, mmap=False, max_age=None): "
        "store the "
        "fixture's value on disk and load it on later runs while its code, parameters, "
        "dependencies and files are unchanged (pytest-memo)",
    )
    _max_size(config)  # a bad size is a usage error before anything runs
    _check_settings(config)
    config.stash[RUN] = _run_identity(config)
    config.stash[BY_NAME] = frozenset(config.getini("memo_fixtures"))
    current.run_started(config, lambda: _memo(config))  # for pytest_memo.cache
    if _uses_the_store_from_the_start(config):
        _memo(config)


# Options that make a run use the store from its start (and report on it at the end).
STORE_OPTIONS = (
    "memo_clear",
    "memo_off",
    "memo_refresh",
    "memo_explain",
    "memo_prune",
    "memo_dir",
    "memo_read_only",
    "memo_max_size",
)


def _uses_the_store_from_the_start(config: pytest.Config) -> bool:
    """Whether the store is set up before collection: it exists (its repairs and the
    clean-up of killed writers are done before any test), or an option asks for it.
    Otherwise (a project that has memoized nothing yet) it is set up when first needed."""
    if any(config.getoption(name) not in (None, False) for name in STORE_OPTIONS):
        return True
    location = config.getini("memo_dir")
    if is_url(location) or config.getini("memo_read_only") or config.getini("memo_max_size"):
        return True
    return bool(config.stash[BY_NAME]) or local_directory(config.rootpath, location).exists()


def _check_settings(config: pytest.Config) -> None:
    """What would be a usage error when the store is set up, checked before anything runs
    (the store may be set up only in the middle of the run, inside a fixture's setup)."""
    _progress_after(config)
    if any(name.startswith("PYTEST_MEMO_") for name in os.environ):
        from pytest_memo.store import signing

        signing.from_environment()  # conflicting or malformed keys


def _progress_after(config: pytest.Config) -> float:
    text = config.getini("memo_progress_after")
    try:
        return float(text)
    except ValueError:
        raise pytest.UsageError(
            f"memo_progress_after: {text!r} is not a number of seconds"
        ) from None


_SETTING_UP = threading.Lock()  # cached functions may first be called from several threads


def _memo(config: pytest.Config) -> FixtureMemo:
    """The run's memo state, set up on the first call."""
    memo = config.stash.get(MEMO, None)
    if memo is None:
        with _SETTING_UP:
            memo = config.stash.get(MEMO, None) or _set_up(config)
    return memo


def _set_up(config: pytest.Config) -> FixtureMemo:
    from pytest_memo.memoize.fixture import FixtureMemo, Settings

    store = None if config.getoption("memo_off") else _store(config)
    memo = config.stash[MEMO] = FixtureMemo(
        Settings(
            rootdir=config.rootpath,
            store=store,
            run=config.stash[RUN],
            refresh=bool(config.getoption("memo_refresh")),
            by_name=config.stash[BY_NAME],
            project=project_identity(config.rootpath, config.getini("memo_project")),
        )
    )
    if getattr(config, "workerinput", {}).get(WORKER_STORE_UNUSABLE):
        memo.store_unusable()  # the main process has warned about it
    if store is not None and getattr(config, "workerinput", {}).get(WORKER_STORE_READ_ONLY):
        store.read_only = True  # the main process found it read-only and said so
    if store is not None and not _is_worker(config):
        _prepare(config, store)
        _start_progress(config)
    return memo


def _memoized(config: pytest.Config, fixturedef: Any) -> bool:
    """Whether ``fixturedef`` is to be memoized: marked, or named in memo_fixtures."""
    by_name = config.stash.get(BY_NAME, frozenset())
    return marker.fixture_options(fixturedef, by_name) is not None


def _start_progress(config: pytest.Config) -> None:
    """The live line (progress.py), in the main process of a run with a terminal."""
    from pytest_memo.memoize.engine import Memoized
    from pytest_memo.memoize.progress import Progress

    after = _progress_after(config)
    engine = config.stash[MEMO].engine
    if config.get_verbosity() < 0 or not isinstance(engine, Memoized):
        return
    with contextlib.suppress(ValueError, OSError):  # no real file behind stdout
        engine.progress = Progress.of_terminal(sys.stdout.fileno(), after)


def _run_identity(config: pytest.Config) -> str:
    """The run's identity, the same in the main process and in all its workers: entries
    carry it, and --memo-refresh recomputes those another run wrote."""
    from_xdist = getattr(config, "workerinput", {}).get(WORKER_RUN)
    if from_xdist:
        return str(from_xdist)
    from pytest_memo.parallel.spawn import is_spawned_worker

    if is_spawned_worker() and os.environ.get(RUN_VARIABLE):
        return os.environ[RUN_VARIABLE]
    run = os.urandom(16).hex()
    if not _is_worker(config):
        os.environ[RUN_VARIABLE] = run  # removed in pytest_unconfigure
    return run


def _prepare(config: pytest.Config, store: Store) -> None:
    from pytest_memo.store.local import StoreRepairWarning

    # What the store repaired (its layout, its index) is said before the tests run.
    with warnings.catch_warnings(record=True) as repairs:
        warnings.simplefilter("always", StoreRepairWarning)
        _prepare_store(config, store)
    for repair in repairs:
        config.issue_config_time_warning(repair.message, stacklevel=2)  # type: ignore[arg-type]


def _prepare_store(config: pytest.Config, store: Store) -> None:
    clear = config.getoption("memo_clear")
    try:
        if store.root.exists():
            store.prepare()
        else:
            # Made only when something is memoized (the engine prepares it then): a project
            # with the plugin installed and nothing memoized gets no directory.  Whether it
            # can be made is checked now, for one warning before any worker starts.
            if not store.read_only:
                store.check_creatable()
            store.probe()
        if clear is not None:
            removed = store.clear(None if clear == CLEAR_ALL else clear)
            config.stash[MEMO].removed.append(_cleared(clear, removed))
            # ``--memo-clear tests/`` takes the path as a fixture name (the option's value
            # is optional) and the run would go on without it: refuse rather than run
            # other tests with nothing cleared.
            if (
                clear != CLEAR_ALL
                and not removed
                and (config.invocation_params.dir / clear).exists()
            ):
                _refuse_path_as_fixture(clear)
    except OSError as error:
        config.issue_config_time_warning(
            pytest.PytestWarning(f"pytest-memo: cannot use the store in {store.root}: {error}"),
            stacklevel=2,
        )
        # One warning per run: fixtures (and xdist workers) compute without trying again.
        config.stash[MEMO].store_unusable()


def _refuse_path_as_fixture(clear: str) -> None:
    raise pytest.UsageError(
        f"--memo-clear took {clear!r} as the name of a fixture, but it is a path "
        "and no fixture of that name has stored values: put --memo-clear after "
        "the paths to clear every fixture, or write --memo-clear=FIXTURE"
    )


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Generator[None, Any, Any]:
    config = request.config
    if RUN not in config.stash or not _memoized(config, fixturedef):
        return (yield)
    memo = _memo(config)
    options = memo.options_for(fixturedef)
    if options is None:
        return (yield)
    return (yield from memo.setup(fixturedef, request, options))


REFUSED = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if RUN not in config.stash:
        return
    for item in items:
        # ``@pytest.mark.memo`` on a test function records options instead of a mark (it
        # cannot tell a test from a fixture-to-be); give such tests the mark so ``-m memo``
        # finds them.
        if marker.options_of(getattr(item, "obj", None)) is not None:
            item.add_marker("memo")
        definitions = item_fixture_definitions(item).values()
        memoized = [defs[-1] for defs in definitions if defs and _memoized(config, defs[-1])]
        if memoized:
            # A memoized fixture that can never be memoized (a yield fixture, one taking
            # tmp_path): found now, each test using it errors with the reason before any
            # fixture is set up.
            refusals = _memo(config).refusals(memoized)
            if refusals:
                item.stash[REFUSED] = refusals


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    refusals = item.stash.get(REFUSED, None)
    if refusals:
        pytest.fail("\n".join(dict.fromkeys(refusals)), pytrace=False)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    memo = config.stash.get(MEMO, None)
    if memo is None or memo.store is None:
        return
    try:
        memo.store.flush()
        if _is_worker(config):
            config.workeroutput[WORKER_OUTPUT] = memo.stats.as_dict()  # type: ignore[attr-defined]
            return
        if memo.store.read_only:
            _skip_housekeeping(config)
            return
        if config.getoption("memo_prune"):
            everything = _ran_everything(session)
            memo.pruned = memo.store.prune(
                memo.stats.used_keys,
                memo.stats.used_slots,
                everything=everything,
                project=memo.settings.project,
            )
        if (limit := _max_size(config)) is not None:
            from pytest_memo.memoize.stats import format_size

            evicted = memo.store.evict(limit)
            memo.removed.append(
                f"{len(evicted)} least recently used removed (--memo-max-size {format_size(limit)})"
            )
    except OSError as error:
        config.issue_config_time_warning(
            pytest.PytestWarning(f"pytest-memo: cannot update the store index: {error}"),
            stacklevel=2,
        )


def _skip_housekeeping(config: pytest.Config) -> None:
    """A store found read-only (not asked for: --memo-read-only refuses these options)."""
    if config.getini("memo_read_only") or config.getoption("memo_read_only"):
        return  # on purpose: memo_max_size in the ini is meant for the runs that write
    asked = [
        name
        for name, wanted in (
            ("--memo-prune", config.getoption("memo_prune")),
            ("--memo-max-size", _max_size(config) is not None),
        )
        if wanted
    ]
    if asked:
        config.issue_config_time_warning(
            pytest.PytestWarning(
                f"pytest-memo: the store is read-only: {' and '.join(asked)} did nothing"
            ),
            stacklevel=2,
        )


DESELECTED = pytest.StashKey[int]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        config = items[0].config
        config.stash[DESELECTED] = config.stash.get(DESELECTED, 0) + len(items)


def _cleared(clear: str, removed: int) -> str:
    if clear == CLEAR_ALL:
        return f"{removed} removed (--memo-clear)"
    if removed:
        return f"{removed} of fixture {clear!r} removed (--memo-clear)"
    return f"--memo-clear={clear}: no stored values of a fixture named {clear!r}"


def _ran_everything(session: pytest.Session) -> bool:
    """Did this run use every test of the suite?  Only then may it prune unused entries.

    Not when tests were deselected (-k, -m, --lf, --shard), named on the command line,
    or not reached (-x, Ctrl-C, collection errors).
    """
    config = session.config
    return not (
        config.stash.get(DESELECTED, 0)
        or config.args_source == pytest.Config.ArgsSource.ARGS
        or session.shouldfail
        or session.shouldstop
        or (session.testsfailed and not session.testscollected)
        or getattr(config.option, "lf", False)
        or getattr(config.option, "stepwise", False)
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    memo = config.stash.get(MEMO, None)
    if memo is None or memo.settings.store is None:
        return
    if not memo.stats.fixtures and memo.pruned is None and not memo.removed:
        return
    store = memo.settings.store
    try:
        size: int | None = store.total_size()
    except OSError:
        size = None
    where = _display_path(store.root, config.rootpath)
    line = memo.stats.summary_line(size, where)
    if store.read_only:
        line += " (read-only: nothing stored)"
    if memo.pruned is not None:
        line += f"; {memo.pruned} unused removed (--memo-prune)"
        remote = getattr(store, "remote_pruned", None)
        if remote is not None:
            line += f", {remote} from the remote store"
    for removed in memo.removed:
        line += f"; {removed}"
    terminalreporter.write_line(line)
    if config.getoption("memo_explain"):
        for name, reason in memo.stats.explained:
            terminalreporter.write_line(f"  {name}: {reason}")
    if config.get_verbosity() > 0:
        for line in memo.stats.table():
            terminalreporter.write_line("  " + line)


def pytest_unconfigure(config: pytest.Config) -> None:
    current.run_ended(config)
    memo = config.stash.get(MEMO, None)
    progress = getattr(memo.engine, "progress", None) if memo is not None else None
    if progress is not None:
        progress.close()
    if RUN in config.stash and os.environ.get(RUN_VARIABLE) == config.stash[RUN]:
        del os.environ[RUN_VARIABLE]
    if memo is not None and memo.settings.store is not None:
        memo.settings.store.close()


def _display_path(path: Path, rootdir: Path) -> str:
    try:
        return path.relative_to(rootdir).as_posix()
    except ValueError:
        return str(path)


# pytest-xdist's hooks (optional: without pytest-xdist, only --par runs add their specs).


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    from pytest_memo.store.remote import WORKER_INPUT as REMOTE_OFF

    if RUN in node.config.stash:
        node.workerinput[WORKER_RUN] = node.config.stash[RUN]
    memo = node.config.stash.get(MEMO, None)
    if memo is not None:
        node.workerinput[WORKER_STORE_UNUSABLE] = memo.store is None
        node.workerinput[WORKER_STORE_READ_ONLY] = bool(
            memo.settings.store is not None and memo.settings.store.read_only
        )
        node.workerinput[REMOTE_OFF] = not getattr(memo.settings.store, "remote_usable", True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    counts = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if counts and RUN in node.config.stash:
        # A worker memoized something: under pytest-xdist, whose main process does not
        # collect, its memo state is set up here, for the summary.
        _memo(node.config).stats.merge(counts)
