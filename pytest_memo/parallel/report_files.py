"""The files that reporting plugins write for the whole run, which only the main process
may write: it replays every test's reports, so it alone has them all.

Such plugins leave their writer out of pytest-xdist's workers by testing for
``config.workerinput`` in ``pytest_configure``.  A forked worker was configured as the
main process, before it was a worker, so it holds the main process's writers, and their
open files; a spawned worker is configured before it learns it is one, so it makes writers
of its own, for the same paths.  Here are the writers a worker drops (junitxml's,
pytest-reportlog's, pytest-html's) and the options that keep a spawned worker from
opening their files at all.
"""

from __future__ import annotations

import pytest

from pytest_memo.pytest_compat import xml_key

__all__ = ["main_only_writers", "spawned_worker_options"]

# (module, class) of the plugin objects that write a run's report files.
_WRITER_CLASSES = (
    ("pytest_reportlog.plugin", "ReportLogPlugin"),
    ("pytest_html.basereport", "BaseReport"),
)


def main_only_writers(config: pytest.Config) -> list[object]:
    """The registered plugins in this process that write the run's report files."""
    writers: list[object] = [
        plugin for plugin in config.pluginmanager.get_plugins() if _is_writer(plugin)
    ]
    xml = config.stash.get(xml_key, None)  # junitxml's
    if xml is not None and config.pluginmanager.is_registered(xml):
        writers.append(xml)
    return writers


def spawned_worker_options(config: pytest.Config) -> list[str]:
    """Options for a spawned worker's command line (after the main process's arguments: the
    last one wins).  pytest-reportlog opens its file, emptying it, as it is configured."""
    return ["--report-log="] if getattr(config.option, "report_log", None) else []


def _is_writer(plugin: object) -> bool:
    return any((cls.__module__, cls.__name__) in _WRITER_CLASSES for cls in type(plugin).__mro__)
