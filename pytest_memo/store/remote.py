"""A store shared through object storage: ``--memo-dir=s3://bucket/prefix`` (or ``gs://``,
``az://``, ``file://``, any fsspec URL).

A :class:`RemoteStore` is a local :class:`~pytest_memo.store.local.Store` — a cache directory
under the rootdir, ``.pytest_memo/remote/<hash of the URL>/``, which holds the entries
used on this machine, the index and the locks — backed by a remote copy of the same
layout::

    <url>/v1/entries/ab/abcdef....memo   (and .sig beside it, with PYTEST_MEMO_SECRET)

A read that misses locally downloads the remote entry to a temporary file beside its
local place and renames it there, then reads it as a local entry: every entry checks
itself, so a damaged download is a CorruptFileError like a damaged local file.  A
read-only run (``--memo-read-only``) writes nothing that outlives it: it downloads into a
temporary directory of its own process, removed when the run ends (Ctrl-C included), and
by a later run if this one was killed.  A write
stores locally, then uploads.  An upload publishes all at once: a PUT of a whole object is
atomic on object stores (S3, GCS, Azure); elsewhere the file goes to a temporary name and
is moved into place.  Two machines missing the same entry at once each compute it and
upload it, one after the other; neither can leave half an entry behind.  File locks (single
flight) hold within a machine, through the local cache.

The remote is a nicety: when it cannot be reached (no network, wrong endpoint, missing
credentials...) it is given up for the rest of the run with one warning, and the run goes
on with the local cache.  fsspec and the filesystem package of the URL's protocol (s3fs,
gcsfs, adlfs) are optional dependencies: without them a URL is a usage error that names
the package to install.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pytest_memo.core.errors import CorruptFileError, MemoWarning
from pytest_memo.core.files import temporary_beside, temporary_directory, writer_gone
from pytest_memo.store.local import (
    Entry,
    EntryInfo,
    Store,
    mark_cache_directory,
)
from pytest_memo.store.location import DEFAULT_DIRECTORY, LAYOUT, local_directory
from pytest_memo.store.signing import Signing, from_environment

__all__ = ["RemoteStore", "local_cache", "open_filesystem", "remote_store"]
# The manifest beside an entry (pytest_memo.memoize.explain): what its value read.
MANIFEST = ".parts"

# Protocols whose upload of a whole object is atomic: readers see the old object or the new
# one, never a part.  Anything else is uploaded to a temporary name and moved into place.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# The extra of pytest-memo that installs the filesystem package of a protocol.
EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
}
# s3fs waits 5 s to connect and 15 s to read, then retries 5 times with botocore's own
# retries inside each: minutes before an unreachable endpoint is given up.  A cache must
# fail fast.  ``config_kwargs`` in memo_storage_options override these timeouts.
S3_CONFIG = {"connect_timeout": 3, "read_timeout": 5, "retries": {"max_attempts": 1}}
S3_RETRIES = 1
WORKER_INPUT = "pytest_memo_remote_off"  # xdist: the main process gave the remote up
# The temporary directories of read-only runs' downloads, in the system's temporary
# directory: pytest-memo-downloads.<host>.<pid>.<random>.tmp
DOWNLOADS = "pytest-memo-downloads"
# --memo-prune on a remote store: entries no run used (hit or stored) for this long go.
DEFAULT_PRUNE_GRACE = "7d"
# Object timestamps are whole seconds (S3's LastModified): an entry is only old enough to
# prune if it is older than the cutoff by this much more.
TIMESTAMP_SLACK = 2.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def local_cache(rootdir: Path, url: str) -> Path:
    """The local cache directory of the remote store at ``url``."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return local_directory(rootdir, None) / "remote" / digest


class RemoteStore(Store):
    """A local store whose misses are looked up in, and whose writes are copied to, a remote
    directory given by an fsspec URL."""

    def __init__(
        self,
        root: Path,
        url: str,
        storage_options: dict[str, Any] | None = None,
        secret: bytes | None = None,
        warn: Callable[[str], None] | None = None,
        signing: Signing | None = None,
    ) -> None:
        super().__init__(root, secret=secret, signing=signing)
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._warn = warn or _warn
        self._filesystem, self._path = open_filesystem(self.url, self.storage_options)
        self._filesystem_pid = os.getpid()
        self._remote_off = False
        self._uploads_off = False  # read-only access: entries are read, never uploaded
        self._remote_lock = threading.Lock()
        self._probed_pid: int | None = None
        # Remote pruning: when this run started (the grace period is counted back from
        # then), the keys whose use this process recorded, how many the last prune removed.
        self._started = time.monotonic()
        self._marked: set[str] = set()
        self._marks_off = False
        self.prune_grace = parse_duration(DEFAULT_PRUNE_GRACE)
        self.remote_pruned: int | None = None
        # Read-only: this process's directory of downloads (with the process that made
        # it: a forked worker makes its own), and where each key downloaded lies.
        self._downloads: tuple[int, Path] | None = None
        self._downloaded: dict[str, Path] = {}
        self._downloads_lock = threading.Lock()

    # -- the remote -----------------------------------------------------------

    @property
    def remote_usable(self) -> bool:
        return not self._remote_off

    def remote_unusable(self, reason: str | None = None) -> None:
        """Stop using the remote for the rest of the run; warn once if there is a reason."""
        with self._remote_lock:
            was_off, self._remote_off = self._remote_off, True
        if reason is not None and not was_off:
            self._warn(
                f"the remote store {self.url} cannot be used ({reason}); this run goes on "
                f"with the local cache in {self.root} only"
            )

    def _give_up(self, error: BaseException) -> None:
        self.remote_unusable(_describe(error))

    def _read_only(self, error: BaseException) -> None:
        """Uploads are refused (read-only credentials, say): keep reading, stop uploading."""
        with self._remote_lock:
            was_off, self._uploads_off = self._uploads_off, True
        if not was_off:
            self._warn(
                f"cannot upload to the remote store {self.url} ({_describe(error)}); it is "
                "used read-only for the rest of this run: values computed here stay in the "
                f"local cache in {self.root}"
            )

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, made again in a forked process (fsspec's event loop thread
        and its connections do not survive a fork)."""
        if self._filesystem_pid != os.getpid():
            self._filesystem, self._path = open_filesystem(self.url, self.storage_options)
            self._filesystem_pid = os.getpid()
        return self._filesystem

    def remote_path(self, key: str, suffix: str = ".memo") -> str:
        return f"{self._path}/{LAYOUT}/entries/{key[:2]}/{key}{suffix}"

    def used_path(self, key: str) -> str:
        """The marker of the entry's last use: an empty object rewritten by each run that
        uses the entry, whose modification time :meth:`prune` reads."""
        return f"{self._path}/{LAYOUT}/used/{key[:2]}/{key}"

    def _atomic_put(self) -> bool:
        protocols = self.fs.protocol
        protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
        return not ATOMIC_PUT_PROTOCOLS.isdisjoint(protocols)

    def _sidecars(self) -> list[str]:
        """Suffixes of the files that travel with an entry: its signature, when signed,
        and its manifest (the files its value read, checked on every hit)."""
        return [".sig", MANIFEST] if self.signing is not None else [MANIFEST]

    def sidecar_written(self, key: str, suffix: str) -> None:
        """Share a file written beside an entry after it was uploaded (its manifest)."""
        local = self.entry_path(key).with_suffix(suffix)
        if not (self.remote_usable and not self._uploads_off and self.keeps_computed):
            return
        try:
            self._publish(local, self.remote_path(key, suffix))
        except PermissionError as error:
            self._read_only(error)
        except Exception as error:
            self._give_up(error)

    def prepare(self) -> None:
        """Create the local cache; then, once per process, check that the remote answers,
        so that a remote out of reach gives one warning before any test runs."""
        super().prepare()
        parent = self.root.parent.parent  # .pytest_memo: git and backups skip it too
        if parent.name == DEFAULT_DIRECTORY and not self.read_only:
            mark_cache_directory(parent)
        self.probe()

    def probe(self) -> None:
        """Once per process, check that the remote answers (see :meth:`prepare`)."""
        if self._probed_pid == os.getpid() or not self.remote_usable:
            return
        self._probed_pid = os.getpid()
        # An object store's bucket (container) must exist; a directory is made on demand.
        bucket = self._path.split("/", 1)[0] if self._atomic_put() else None
        try:
            self.fs.info(bucket or f"{self._path}/{LAYOUT}")
        except FileNotFoundError as error:
            if bucket:
                self.remote_unusable(f"bucket {bucket!r} not found: {_describe(error)}")
        except Exception as error:  # anything: network, credentials, the server's answers
            self._give_up(error)

    # -- entries --------------------------------------------------------------

    def entry_path(self, key: str, suffix: str = ".memo") -> Path:
        """In the local cache; for an entry a read-only run downloaded, in its downloads."""
        downloads = self._downloaded.get(key)
        if downloads is not None:
            return _in(downloads, key, suffix)
        return super().entry_path(key, suffix)

    def _download_directory(self) -> Path:
        """This process's directory of downloads, made on first use (raises OSError)."""
        with self._downloads_lock:
            if self._downloads is None or self._downloads[0] != os.getpid():
                parent = Path(tempfile.gettempdir())
                remove_abandoned_downloads(parent)
                self._downloads = (os.getpid(), temporary_directory(parent, DOWNLOADS))
            return self._downloads[1]

    def close(self) -> None:
        """Close the index; the downloads of a read-only run go with it: the run ends."""
        super().close()
        with self._downloads_lock:
            if self._downloads is None or self._downloads[0] != os.getpid():
                return  # none, or the parent process's (a forked worker): not ours
            directory = self._downloads[1]
            self._downloads = None
            self._downloaded = {k: d for k, d in self._downloaded.items() if d != directory}
        shutil.rmtree(directory, ignore_errors=True)

    def read(self, key: str, mmap: bool = False) -> Entry | None:
        entry = super().read(key, mmap=mmap)
        if entry is not None or not self.remote_usable or not self._download(key):
            return entry
        try:
            return super().read(key, mmap=mmap)
        except CorruptFileError as error:
            # The same kind of error (UntrustedEntryError: refused, not damaged), located.
            raise type(error)(f"{error} (downloaded from {self.url})") from None

    def _download(self, key: str) -> bool:
        """Bring the remote entry into the local cache, or in a read-only run into this
        process's downloads; False if there is none (or no remote)."""
        try:
            downloads = self._download_directory() if self.read_only else None
            target = super().entry_path(key) if downloads is None else _in(downloads, key)
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            return False  # the local store's own problem: its read and write report it
        if not self._fetch(key, target):
            return False
        if downloads is not None:
            self._downloaded[key] = downloads
        return True

    def _fetch(self, key: str, target: Path) -> bool:
        """Download the entry (and its sidecars) to ``target``: False if there is none."""
        files = [("", target)] + [
            (suffix, target.with_suffix(suffix)) for suffix in self._sidecars()
        ]
        downloaded: list[tuple[str, Path]] = []
        try:
            for suffix, local in files:
                handle, temporary = temporary_beside(local)
                os.close(handle)
                downloaded.append((temporary, local))
                try:
                    self.fs.get_file(self.remote_path(key, suffix or ".memo"), temporary)
                except FileNotFoundError:
                    if not suffix:
                        return False  # no such entry
                    # A missing signature: the entry comes without it and is refused as
                    # unsigned, which is the truth.
                    Path(temporary).unlink(missing_ok=True)
                    downloaded.pop()
                except Exception as error:
                    self._give_up(error)
                    return False
            # The entry last: a reader who finds it finds its signature beside it.
            for temporary, local in reversed(downloaded):
                os.replace(temporary, local)
            downloaded.clear()
            return True
        except OSError:
            return False  # a local file could not be made: the entry stays a miss
        finally:
            for temporary, _ in downloaded:
                Path(temporary).unlink(missing_ok=True)

    def note_hit(self, entry: Entry) -> None:
        super().note_hit(entry)
        self._mark_used(entry.key)

    def _mark_used(self, key: str) -> None:
        """Record in the remote that this run used the entry (once per process and key):
        a remote --memo-prune keeps what any run used within its grace period."""
        if (
            key in self._marked
            or self._marks_off
            or self._uploads_off
            or self.read_only  # --memo-read-only: no last-use updates, here or there
            or not self.remote_usable
        ):
            return
        self._marked.add(key)
        path = self.used_path(key)
        try:
            if not self._atomic_put():
                self.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
            self.fs.pipe_file(path, b"")
        except PermissionError:
            # Read-only credentials (pull requests): their use goes unrecorded, quietly;
            # entries are still read.
            self._marks_off = True
        except Exception as error:
            self._give_up(error)

    def write(self, key: str, info: EntryInfo, value: Any, compress: object = None) -> int:
        size = super().write(key, info, value, compress=compress)
        if self.remote_usable and not self._uploads_off and self.keeps_computed:
            self._upload(key)
        return size

    def _upload(self, key: str) -> None:
        local = self.entry_path(key)
        # The signature first: a reader who finds the entry finds its signature too.
        suffixes = [suffix for suffix in self._sidecars() if local.with_suffix(suffix).exists()]
        try:
            for suffix in [*suffixes, ".memo"]:
                self._publish(local.with_suffix(suffix), self.remote_path(key, suffix))
        except PermissionError as error:
            self._read_only(error)
        except Exception as error:
            self._give_up(error)

    def _publish(self, local: Path, remote: str) -> None:
        fs = self.fs
        if self._atomic_put():
            fs.put_file(str(local), remote)
            return
        directory, _, name = remote.rpartition("/")
        fs.makedirs(directory, exist_ok=True)
        temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
        try:
            fs.put_file(str(local), temporary)
            fs.mv(temporary, remote)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(temporary)
            raise

    # -- pruning --------------------------------------------------------------

    def prune(
        self,
        used_keys: set[str],
        used_slots: set[str],
        everything: bool,
        project: str | None = None,
    ) -> int:
        """Prune the local cache (see :meth:`Store.prune`), then the remote: remove its
        entries that no run, here or elsewhere, used within :attr:`prune_grace` before this
        run started (their count is left in :attr:`remote_pruned`).  The remote part goes
        by time alone, whatever project wrote the entries."""
        count = super().prune(used_keys, used_slots, everything, project)
        self.remote_pruned = None
        if self.remote_usable:
            try:
                self.remote_pruned = self._prune_remote(used_keys)
            except Exception as error:
                self._warn(
                    f"cannot prune the remote store {self.url} ({_describe(error)}); its "
                    "entries are kept"
                )
        return count

    def _server_now(self) -> float:
        """The remote's clock (what object times are measured by), read from the time of
        an object written now: this machine's clock may be off."""
        probe = f"{self._path}/{LAYOUT}/clock/{uuid.uuid4().hex}"
        if not self._atomic_put():
            self.fs.makedirs(probe.rpartition("/")[0], exist_ok=True)
        self.fs.pipe_file(probe, b"")
        try:
            now = _modified(self.fs.info(probe))
        finally:
            with contextlib.suppress(Exception):
                self.fs.rm_file(probe)
        if now is None:
            raise OSError(f"{self.url} gives objects no modification time")
        return now

    def _last_uses(self) -> tuple[dict[str, float], dict[str, list[str]]]:
        """For each key in the remote: its last use (its entry written, or a run using it),
        and its objects (entry, signature, marker)."""
        base = f"{self._path}/{LAYOUT}"
        last: dict[str, float] = {}
        objects: dict[str, list[str]] = {}
        for folder in ("entries", "used"):
            try:
                found = self.fs.find(f"{base}/{folder}", detail=True)
            except FileNotFoundError:
                continue
            for path, info in found.items():
                name = path.rpartition("/")[2]
                if folder == "entries":
                    # ab/<key>.memo, ab/<key>.sig; ab/.<key>.memo.<hex>.tmp (an upload)
                    name = name.lstrip(".").split(".", 1)[0]
                modified = _modified(info)
                # No time: treated as used now, so never pruned.
                last[name] = max(last.get(name, 0.0), modified or float("inf"))
                objects.setdefault(name, []).append(path)
        return last, objects

    def _prune_remote(self, used_keys: set[str]) -> int:
        """Remove the remote's entries last used before the cutoff; returns how many.

        Safe with jobs running meanwhile: the cutoff is the start of this run less the
        grace period, so whatever another job wrote or used since is kept.  (A use between
        the listing and the removal, a fraction of a second, is lost: that entry is then
        computed again by the next run that needs it.)"""
        cutoff = (
            self._server_now()
            - (time.monotonic() - self._started)
            - self.prune_grace
            - TIMESTAMP_SLACK
        )
        last, objects = self._last_uses()
        doomed = {key for key, when in last.items() if when < cutoff and key not in used_keys}
        # Entries first (a reader finds an entry with its signature, or nothing), markers
        # last: a failure half-way leaves what remains prunable next time.
        paths = sorted(
            (path for key in doomed for path in objects.get(key, [])),
            key=lambda path: (not path.endswith(".memo"), "/used/" in path),
        )
        removed = sum(1 for path in paths if path.endswith(".memo"))
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)
        return removed

    def clear(self, fixture: str | None = None) -> int:
        """Remove every entry (or a fixture's), here and in the remote.

        The remote has no index: for one fixture, its entries in the remote are those this
        machine's cache knows of.
        """
        doomed = [entry.key for entry in self.listing() if entry.fixture == fixture]
        count = super().clear(fixture)
        if not self.remote_usable:
            return count
        try:
            if fixture is None:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(f"{self._path}/{LAYOUT}", recursive=True)
            for key in doomed:
                paths = [self.remote_path(key, s) for s in (".memo", ".sig", MANIFEST)]
                for path in [*paths, self.used_path(key)]:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.rm_file(path)
        except Exception as error:
            self._give_up(error)
        return count


def _in(downloads: Path, key: str, suffix: str = ".memo") -> Path:
    """Where a downloaded entry (or a file that goes with it) lies in ``downloads``."""
    return downloads.joinpath(key[:2], key + suffix)


def remove_abandoned_downloads(parent: Path) -> None:
    """Remove the download directories in ``parent`` of read-only runs that were killed
    (SIGKILL, a crash) before they could remove them."""
    abandoned: list[str] = []
    with contextlib.suppress(OSError), os.scandir(parent) as items:
        abandoned = [
            item.path
            for item in items
            if item.name.startswith(f"{DOWNLOADS}.")
            and item.is_dir(follow_symlinks=False)
            and writer_gone(Path(item.path))
        ]
    for path in abandoned:
        shutil.rmtree(path, ignore_errors=True)


def _modified(info: dict[str, Any]) -> float | None:
    """An object's modification time (seconds since the epoch) from fsspec's info, whose
    field names and types differ by filesystem; None if it has none."""
    for name in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``0``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (or a number
    of seconds); raises ValueError."""
    text = text.strip().lower()
    unit = UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration: a number with s, m, h, d or w (e.g. 7d, 12h)"
        ) from None
    if value < 0 or value != value:
        raise ValueError(f"{text!r} is not a duration: it must be 0 or more")
    return value


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".rstrip(": ")


def open_filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path in it; raises pytest.UsageError when
    the packages it needs are missing or the options do not suit it."""
    protocol = url.split("://", 1)[0].lower()
    extra = EXTRAS.get(protocol, "remote")
    install = f"pip install 'pytest-memo[{extra}]'"
    try:
        import fsspec
    except ImportError:
        raise pytest.UsageError(
            f"--memo-dir / memo_dir {url!r} is a URL, which needs fsspec: {install}"
        ) from None
    options = _with_defaults(protocol, options)
    try:
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except ImportError as error:
        raise pytest.UsageError(
            f"--memo-dir / memo_dir {url!r} needs the filesystem package for {protocol}:// "
            f"({error}): {install}"
        ) from None
    except ValueError as error:  # an unknown protocol
        raise pytest.UsageError(f"--memo-dir / memo_dir {url!r}: {error}") from None
    except Exception as error:  # options the filesystem does not take
        raise pytest.UsageError(
            f"--memo-dir / memo_dir {url!r}: cannot open it with these storage options "
            f"({type(error).__name__}: {error}); see memo_storage_options"
        ) from None
    if protocol in ("s3", "s3a") and hasattr(fs, "retries"):
        fs.retries = S3_RETRIES  # a class attribute of s3fs, not an option
    return fs, str(path).rstrip("/")


def _with_defaults(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    if protocol in ("s3", "s3a"):
        options["config_kwargs"] = {**S3_CONFIG, **options.get("config_kwargs", {})}
        # botocore reads these itself since 1.31; older ones need them passed.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = options.get("client_kwargs", {})
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in client_kwargs:
            options["endpoint_url"] = endpoint
    return options


def remote_store(config: pytest.Config, url: str) -> RemoteStore:
    """The store of ``--memo-dir=URL``, with the ``memo_storage_options`` ini option."""
    text = config.getini("memo_storage_options")
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as error:
        raise pytest.UsageError(f"memo_storage_options is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise pytest.UsageError("memo_storage_options must be a JSON object (a dict of options)")

    def warn(message: str) -> None:
        # A configuration-time warning reaches the summary from any phase of the run,
        # including pytest_configure, where the remote is first tried.
        config.issue_config_time_warning(_memo_warning(message), stacklevel=2)

    store = RemoteStore(
        local_cache(config.rootpath, url),
        url,
        options,
        warn=warn,
        signing=from_environment(),
    )
    if getattr(config, "workerinput", {}).get(WORKER_INPUT):
        store.remote_unusable()  # the main process has warned about it
    grace = config.getoption("memo_prune_grace", None) or config.getini("memo_prune_grace")
    try:
        store.prune_grace = parse_duration(grace or DEFAULT_PRUNE_GRACE)
    except ValueError as error:
        raise pytest.UsageError(f"--memo-prune-grace / memo_prune_grace: {error}") from None
    return store


def _memo_warning(message: str) -> Warning:
    return MemoWarning(f"pytest-memo: {message}")


def _warn(message: str) -> None:
    import warnings

    warnings.warn(_memo_warning(message), stacklevel=3)
