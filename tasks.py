"""Project commands that set up what they need: ``python3 tasks.py demo|test``.

The first call creates ``.venv`` and installs what the command needs there: ``demo`` only the
package (and so pytest), ``test`` the package with its ``dev`` extra too.  Later calls reuse it
and reinstall only when ``pyproject.toml`` changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import venv
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
DEV_STAMP = "pytest-memo-installed-dev"


def _run(
    *args: str | Path,
    check: bool = True,
    env: dict[str, str] | None = None,
    user: str | None = None,
    quiet: bool = False,
) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    output = subprocess.DEVNULL if quiet else None
    code = subprocess.call([str(a) for a in args], cwd=ROOT, env=env, user=user, stdout=output)
    if check and code != 0:
        sys.exit(code)
    return code


def _installed(stamp: Path, wanted: str) -> bool:
    return stamp.exists() and stamp.read_text() == wanted and PYTHON.exists()


def ensure_venv(extra: str | None) -> None:
    """``.venv`` with the package installed (editable), and ``extra``'s requirements if given.

    One stamp per set of requirements, holding the hash of the ``pyproject.toml`` it was
    installed from: the ``dev`` set includes the package, so it serves the demo too.
    """
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = VENV / f"pytest-memo-installed-{extra or 'package'}"
    if _installed(stamp, wanted) or (extra is None and _installed(VENV / DEV_STAMP, wanted)):
        return
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    if extra:  # the development tools may want a newer pip; the demo does not wait for one
        _run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    _run(PYTHON, "-m", "pip", "install", "--quiet", "-e", f".[{extra}]" if extra else ".")
    stamp.write_text(wanted)


def ensure_pytest84() -> Path:
    """A second environment with pytest 8.4: the tests check the oldest pytest we support too."""
    python = ROOT / ".venv-pytest84" / BIN.name / PYTHON.name
    plugins = "pytest==8.4.* pytest-xdist pytest-subtests==0.15.0"  # (pytest 9 has subtests)
    stamp = python.parent.parent / "pytest-memo-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + plugins.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    if not python.exists():
        venv.create(python.parent.parent, with_pip=True)
    _run(python, "-m", "pip", "install", "--quiet", "-e", ".", *plugins.split())
    stamp.write_text(wanted)
    return python


def ensure_plugins() -> Path:
    """An environment with popular plugins (tests/test_parallel_plugins.py and
    test_threads_plugins.py run them with --par); kept apart so that they do not load into
    every other test's pytest."""
    python = ROOT / ".venv-plugins" / BIN.name / PYTHON.name
    plugins = "pytest==9.2.0 pytest-xdist==3.8.0 syrupy==7.0.1 pytest-django==4.14.0 "
    plugins += "django==5.2.19 pytest-benchmark==5.3.1 hypothesis==6.170.15 pytest-mock==3.17.0 "
    plugins += "pytest-asyncio==1.5.0 pytest-timeout==2.4.0 "  # test_threads_plugins
    plugins += "pytest-rerunfailures==16.7 pytest-cov==7.1.0 coverage==7.17.3 pytest-html==4.2.0 "
    plugins += "pytest-reportlog==1.0.0 pytest-randomly==5.1.0 "
    plugins += "psycopg[binary]==3.3.9"  # pytest-django's tests on PostgreSQL
    stamp = python.parent.parent / "pytest-memo-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + plugins.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return python
    if not python.exists():
        venv.create(python.parent.parent, with_pip=True)
    _run(python, "-m", "pip", "install", "--quiet", "-e", ".", *plugins.split())
    stamp.write_text(wanted)
    return python


POSTGRES_VARIABLE = "PYTEST_MEMO_POSTGRES"  # the server of pytest-django's tests


@contextlib.contextmanager
def postgres_for_tests(env: dict[str, str]) -> Iterator[None]:
    """A PostgreSQL server on loopback for pytest-django's tests, its address in
    ``env[POSTGRES_VARIABLE]``: the one already named there, else a throwaway cluster
    started here and stopped after (the server is installed first when running as root).
    Without one, those tests skip."""
    if env.get(POSTGRES_VARIABLE):
        yield
        return
    bindir = _postgres_bindir() or _install_postgres()
    if bindir is None:
        print("no PostgreSQL server here (nor root to install one): its tests skip", flush=True)
        yield
        return
    with _throwaway_cluster(bindir) as address:
        env[POSTGRES_VARIABLE] = address
        yield


def _postgres_bindir() -> Path | None:
    """Where the server's programs are: Debian's newest version, else those on PATH."""
    debian = Path("/usr/lib/postgresql").glob("*/bin/initdb")
    newest = sorted(debian, key=lambda initdb: int("0" + initdb.parent.parent.name.split(".")[0]))
    initdb = newest[-1] if newest else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _install_postgres() -> Path | None:
    if not _running_as_root() or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ("apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql")
    if _run(*install, check=False, env=env) != 0:  # a new machine has no package lists yet
        _run("apt-get", "update", "-q", env=env)
        _run(*install, env=env)
    # The package may have started a cluster of its own: the tests use theirs only.
    for conf in Path("/etc/postgresql").glob("*/*/postgresql.conf"):
        version, cluster = conf.parent.parent.name, conf.parent.name
        subprocess.call(["pg_ctlcluster", version, cluster, "stop"], stderr=subprocess.DEVNULL)
    return _postgres_bindir()


@contextlib.contextmanager
def _throwaway_cluster(bindir: Path) -> Iterator[str]:
    """A cluster in a temporary directory, on a free loopback port, without durability
    (nothing in it outlives the run); as the postgres user when root, as the server
    refuses to run as root.  Stopped and removed after."""
    user = "postgres" if _running_as_root() else None
    directory = Path(tempfile.mkdtemp(prefix="pytest-memo-postgres-"))
    if user is not None:
        shutil.chown(directory, user)
    data = directory / "data"
    port = _free_port()
    settings = f"-h 127.0.0.1 -p {port} -k {directory} -F -c synchronous_commit=off"
    try:
        initdb = (bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
        _run(*initdb, "-E", "UTF8", user=user, quiet=True)
        log = directory / "server.log"
        _run(bindir / "pg_ctl", "-D", data, "-l", log, "-o", settings, "-w", "start", user=user)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            stop = (bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
            _run(*stop, check=False, user=user, quiet=True)
        shutil.rmtree(directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def demo() -> int:
    """Run the example suite twice: cold (fixtures computed) then warm (loaded from the store)."""
    ensure_venv(extra=None)
    pytest = (PYTHON, "-m", "pytest", "examples", "-q", "-p", "no:cacheprovider")
    print("\n== cold run: the store is cleared, expensive fixtures are computed ==", flush=True)
    _run(*pytest, "--memo-clear")
    print("\n== warm run: the same fixtures are loaded from examples/.pytest_memo ==", flush=True)
    _run(*pytest)
    print("\n== warm run on 2 worker processes (--par=2) ==", flush=True)
    return _run(*pytest, "--par=2", check=False)


def test() -> int:
    """Lint, format check, strict typing, then the whole test suite (with a PostgreSQL
    server on loopback for pytest-django's tests, where one can be had)."""
    ensure_venv(extra="dev")
    _run(PYTHON, "-m", "ruff", "check", ".")
    _run(PYTHON, "-m", "ruff", "format", "--check", ".")
    _run(PYTHON, "-m", "mypy")
    env = {**os.environ, "PYTEST_MEMO_PYTEST84_PYTHON": str(ensure_pytest84())}
    env["PYTEST_MEMO_PLUGINS_PYTHON"] = str(ensure_plugins())
    # Our own runner, in process mode; pytest-xdist is still used by the tests that check
    # memo together with it (inside pytester runs).
    with postgres_for_tests(env):
        return _run(PYTHON, "-m", "pytest", "--par=2", *sys.argv[2:], check=False, env=env)


COMMANDS = {"demo": demo, "test": test}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 tasks.py {{{'|'.join(COMMANDS)}}} [pytest options]")
    sys.exit(COMMANDS[sys.argv[1]]())
