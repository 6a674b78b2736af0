"""A shared remote store: ``--memo-dir=s3://bucket/prefix`` and other fsspec URLs.

The S3 tests talk to a real S3-compatible server, moto's, started on the loopback
interface by this module; pytest runs in subprocesses find it through the standard
``AWS_ENDPOINT_URL`` variable, as they would find any S3-compatible endpoint.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from memo_suite import SPEED_FLAGS, MemoSuite

from pytest_memo.store.local import EntryInfo
from pytest_memo.store.remote import RemoteStore, local_cache, open_filesystem

HAVE_S3 = all(importlib.util.find_spec(name) for name in ("moto", "s3fs", "boto3", "flask"))
needs_s3 = pytest.mark.skipif(
    not HAVE_S3,
    reason="needs moto[server], boto3 and s3fs for a local S3 server: pip install -e '.[dev]'",
)
needs_fsspec = pytest.mark.skipif(
    importlib.util.find_spec("fsspec") is None, reason="needs fsspec: pip install -e '.[dev]'"
)

CONFTEST = """
import numpy as np


@pytest.fixture(scope="session")
@pytest.mark.memo(mmap=True)
def data():
    record("data")
    return {"answer": 42, "array": np.arange(1000.0)}
"""
TESTS = """
def test_answer(data):
    assert data["answer"] == 42

def test_array(data):
    assert data["array"].sum() == 499500.0
"""


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """The standard variables that botocore (and so s3fs) reads; no real AWS setting leaks in."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)


class Bucket:
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.name = f"memo-{uuid.uuid4().hex[:12]}"
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=self.name)

    def keys(self) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def url(self, prefix: str = "team/cache") -> str:
        return f"s3://{self.name}/{prefix}"


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    use_endpoint(monkeypatch, s3_endpoint)
    return Bucket(s3_endpoint)


@pytest.fixture
def project(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", CONFTEST)
    suite.write("test_it.py", TESTS)
    return suite


class Checkout:
    """A copy of the suite in another directory, with no local store: another CI machine."""

    def __init__(self, project: MemoSuite, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.project, self.path, self.monkeypatch = project, path, monkeypatch
        shutil.copytree(
            project.path,
            path,
            ignore=shutil.ignore_patterns(".pytest_memo", "calls.txt", "stdout", "stderr"),
        )

    def run(self, *args: str) -> pytest.RunResult:
        with self.monkeypatch.context() as patch:
            patch.chdir(self.path)  # the suite's calls.txt is relative to the working directory
            return self.project.pytester.run(
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                *SPEED_FLAGS,
                *args,
                timeout=120,
            )

    def calls(self) -> list[str]:
        path = self.path / "calls.txt"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def elsewhere(
    project: MemoSuite, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    def make() -> Checkout:
        return Checkout(project, tmp_path_factory.mktemp("checkout") / "repo", monkeypatch)

    yield make


def entry_keys(keys: list[str]) -> list[str]:
    return [key for key in keys if key.endswith(".memo")]


# -- S3 ---------------------------------------------------------------------------------


@needs_s3
def test_a_cold_run_fills_the_bucket_and_another_checkout_hits_it(
    project: MemoSuite, bucket: Bucket, elsewhere: Any
) -> None:
    url = bucket.url()
    result = project.run_subprocess(f"--memo-dir={url}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["memo: 0 hits*1 miss*"])
    assert project.calls() == ["data"]
    (key,) = entry_keys(bucket.keys())
    assert key.startswith("team/cache/v1/entries/")
    # The local cache holds the entry, the index and the locks; no store at .pytest_memo/v1.
    assert len(project.entries(str(local_cache(project.path, url).relative_to(project.path))))
    assert not (project.path / ".pytest_memo" / "v1" / "entries").exists()
    assert (project.path / ".pytest_memo" / ".gitignore").exists()

    other = elsewhere()
    result = other.run(f"--memo-dir={url}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["memo: 1 hit*0 misses*"])
    assert other.calls() == []  # zero computations: downloaded from the bucket
    assert local_cache(other.path, url).joinpath("v1", "index.sqlite").exists()
    other.run(f"--memo-dir={url}").assert_outcomes(passed=2)  # now a local hit
    assert other.calls() == []


@needs_s3
def test_the_url_can_come_from_the_ini_file_with_storage_options(
    project: MemoSuite, bucket: Bucket, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    project.pytester.makeini(
        f"[pytest]\nmemo_dir = {bucket.url('ini')}\n"
        f'memo_storage_options = {{"endpoint_url": "{s3_endpoint}"}}\n'
    )
    project.run_subprocess().assert_outcomes(passed=2)
    assert len(entry_keys(bucket.keys())) == 1


@needs_s3
def test_signed_entries_travel_with_their_signature(
    project: MemoSuite, bucket: Bucket, elsewhere: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    keys = bucket.keys()
    assert len(entry_keys(keys)) == 1
    assert [key for key in keys if key.endswith(".sig")]
    other = elsewhere()
    other.run(f"--memo-dir={url}").assert_outcomes(passed=2)  # no warning: it was signed
    assert other.calls() == []

    monkeypatch.setenv("PYTEST_MEMO_SECRET", "another secret")
    third = elsewhere()
    result = third.run(f"--memo-dir={url}")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*signature does not match*downloaded from s3://*"])
    assert third.calls() == ["data"]


@needs_s3
def test_a_damaged_remote_entry_is_recomputed_and_replaced(
    project: MemoSuite, bucket: Bucket, elsewhere: Any
) -> None:
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    (key,) = entry_keys(bucket.keys())
    body = bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=body[: len(body) // 2])

    other = elsewhere()
    result = other.run(f"--memo-dir={url}")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*damaged entry of fixture 'data'*"])
    assert other.calls() == ["data"]
    third = elsewhere()  # the recomputed entry was uploaded over the damaged one
    third.run(f"--memo-dir={url}").assert_outcomes(passed=2)
    assert third.calls() == []


@needs_s3
def test_refresh_recomputes_entries_of_the_remote_too(
    project: MemoSuite, bucket: Bucket, elsewhere: Any
) -> None:
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    other = elsewhere()
    other.run(f"--memo-dir={url}", "--memo-refresh").assert_outcomes(passed=2)
    assert other.calls() == ["data"]


@needs_s3
def test_clear_removes_the_entries_of_the_remote_too(
    project: MemoSuite, bucket: Bucket, elsewhere: Any
) -> None:
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    other = elsewhere()
    other.run(f"--memo-dir={url}", "--memo-clear").assert_outcomes(passed=2)
    assert other.calls() == ["data"]  # not downloaded: recomputed, and uploaded again
    assert len(entry_keys(bucket.keys())) == 1


@needs_s3
def test_forked_parallel_workers_use_the_remote(
    project: MemoSuite, bucket: Bucket, elsewhere: Any
) -> None:
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}", "--par=2").assert_outcomes(passed=2)
    assert project.calls() == ["data"]
    assert len(entry_keys(bucket.keys())) == 1
    other = elsewhere()
    other.run(f"--memo-dir={url}", "-n", "2").assert_outcomes(passed=2)
    assert other.calls() == []


@needs_s3
@pytest.mark.parametrize("workers", [(), ("-n", "2"), ("--par=2",)], ids=["serial", "xdist", "par"])
def test_an_unreachable_endpoint_gives_one_warning_and_the_run_goes_on(
    project: MemoSuite, monkeypatch: pytest.MonkeyPatch, workers: tuple[str, ...]
) -> None:
    use_endpoint(monkeypatch, f"http://127.0.0.1:{free_port()}")
    url = "s3://nowhere/cache"
    started = time.monotonic()
    result = project.run_subprocess(f"--memo-dir={url}", *workers)
    assert time.monotonic() - started < 30
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        ["*the remote store s3://nowhere/cache cannot be used*local cache*only*"]
    )
    assert project.calls() == ["data"]
    # The local cache still works: the next run (the server still away) loads from it.
    project.run_subprocess(f"--memo-dir={url}", *workers).assert_outcomes(passed=2, warnings=1)
    assert project.calls() == ["data"]


@needs_s3
def test_a_missing_bucket_gives_one_warning(project: MemoSuite, bucket: Bucket) -> None:
    result = project.run_subprocess(f"--memo-dir=s3://{bucket.name}-missing/cache")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*cannot be used*"])


# -- read-only runs: nothing written anywhere ---------------------------------------------

STOP = """
import os, signal

def test_stop(data):
    if os.environ["STOP"] == "interrupt":
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system's temporary directory of the runs started by the test, empty."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    return directory


@needs_s3
@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_a_read_only_run_keeps_its_downloads_only_while_it_runs(
    project: MemoSuite,
    bucket: Bucket,
    elsewhere: Any,
    temporary: Path,
    workers: tuple[str, ...],
) -> None:
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    before = bucket.keys()
    other = elsewhere()
    for _ in range(2):  # and the second run downloads again: nothing was kept
        result = other.run(f"--memo-dir={url}", "--memo-read-only", *workers)
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["memo: * hit*, 0 misses*(read-only: nothing stored)"])
        assert other.calls() == []  # loaded from the bucket (memory-mapped, mmap=True)
        assert not (other.path / ".pytest_memo").exists()  # no local cache
        assert list(temporary.iterdir()) == []  # the downloads went with the run
    assert bucket.keys() == before


@needs_s3
def test_an_interrupted_or_killed_read_only_run_leaves_no_download_behind(
    project: MemoSuite,
    bucket: Bucket,
    elsewhere: Any,
    temporary: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    other = elsewhere()
    other.path.joinpath("test_stop.py").write_text(STOP)
    monkeypatch.setenv("STOP", "interrupt")  # Ctrl-C
    result = other.run(f"--memo-dir={url}", "--memo-read-only", "test_stop.py")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    assert list(temporary.iterdir()) == []

    monkeypatch.setenv("STOP", "kill")  # SIGKILL: nothing of the run's own can clean up
    result = other.run(f"--memo-dir={url}", "--memo-read-only", "test_stop.py")
    assert result.ret == -signal.SIGKILL, result.stdout.str()
    (left,) = temporary.iterdir()
    assert left.name.startswith("pytest-memo-downloads.")
    result = other.run(f"--memo-dir={url}", "--memo-read-only", "test_it.py")
    result.assert_outcomes(passed=2)  # the next read-only run removes it
    assert list(temporary.iterdir()) == []
    assert other.calls() == []
    assert not (other.path / ".pytest_memo").exists()


# -- other filesystems and errors ---------------------------------------------------------


@needs_fsspec
def test_file_urls_work_too(project: MemoSuite, tmp_path: Path, elsewhere: Any) -> None:
    shared = tmp_path / "shared"
    url = shared.as_uri()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=2)
    entries = list(shared.glob("v1/entries/*/*"))
    # The entry and its manifest (the files its value read), and no temporary file left.
    assert sorted(entry.suffix for entry in entries) == [".memo", ".parts"]
    other = elsewhere()
    other.run(f"--memo-dir={url}").assert_outcomes(passed=2)
    assert other.calls() == []


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
@needs_fsspec
def test_a_missing_filesystem_package_is_a_usage_error(project: MemoSuite) -> None:
    result = project.run_subprocess("--memo-dir=gs://bucket/cache")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gs://bucket/cache*gcsfs*"])
    assert "pip install 'pytest-memo[gcs]'" in result.stderr.str()


def test_without_fsspec_a_url_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fsspec", None)  # import fsspec raises ImportError
    with pytest.raises(pytest.UsageError, match=r"needs fsspec: pip install 'pytest-memo\[s3\]'"):
        open_filesystem("s3://bucket/cache", {})


@needs_fsspec
def test_bad_storage_options_are_a_usage_error(project: MemoSuite, tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    project.pytester.makeini(f"[pytest]\nmemo_dir = {url}\nmemo_storage_options = {{nope\n")
    result = project.run_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*memo_storage_options is not valid JSON*"])


@needs_fsspec
def test_an_unknown_protocol_is_a_usage_error(project: MemoSuite) -> None:
    result = project.run_subprocess("--memo-dir=nosuchfs://bucket/cache")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*nosuchfs://bucket/cache*"])


@needs_fsspec
def test_refused_uploads_leave_the_remote_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = (tmp_path / "shared").as_uri()
    info = EntryInfo(fixture="f", source="conftest.py", slot="s", seconds=1.0, created=0.0)
    warnings: list[str] = []
    writer = RemoteStore(tmp_path / "writer", url, warn=warnings.append)
    writer.prepare()
    writer.write("a1" * 16, info, "shared value")

    reader = RemoteStore(tmp_path / "reader", url, warn=warnings.append)
    reader.prepare()

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("Access Denied")

    monkeypatch.setattr(reader.fs, "put_file", refuse)
    reader.write("b2" * 16, info, "computed here")
    assert len(warnings) == 1
    assert "used read-only" in warnings[0]
    entry = reader.read("a1" * 16)  # reads go on
    assert entry is not None
    assert entry.value == "shared value"
    reader.write("c3" * 16, info, "computed here too")
    assert len(warnings) == 1  # once per run
    assert reader.read("b2" * 16) is not None  # in the local cache
    assert writer.read("b2" * 16) is None  # never reached the remote


# -- Ed25519 keys: main signs, pull requests verify and cannot poison the store ---------

POISONABLE = """
# The forger's lever: a variable named at run time, which the key cannot see (a
# variable read by name would enter the key and give the forged entry a key of its own).
FORGED_BY = "".join(["POI", "SON"])
import os

import numpy as np


@pytest.fixture(scope="session")
@pytest.mark.memo(mmap=True)
def data():
    record("data")
    return {"answer": int(os.environ.get(FORGED_BY, "42")), "array": np.arange(1000.0)}
"""


def objects(bucket: Bucket) -> dict[str, bytes]:
    """The entries and signatures in the bucket (not the markers of their use)."""
    return {
        key: bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read()
        for key in bucket.keys()  # noqa: SIM118 (a method of Bucket, not a dict)
        if "/v1/entries/" in key
    }


@needs_s3
def test_pull_requests_verify_with_the_public_key_and_cannot_poison_main(
    project: MemoSuite, bucket: Bucket, elsewhere: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_signing import Keys, as_main, as_pull_request

    project.write("conftest.py", POISONABLE)
    url = f"--memo-dir={bucket.url()}"
    main, intruder = Keys(), Keys()
    as_main(monkeypatch, main)
    project.run_subprocess(url).assert_outcomes(passed=2)
    signed = objects(bucket)
    assert sorted(key.rsplit(".", 1)[1] for key in signed) == ["memo", "parts", "sig"]

    # A pull request job: the public key only.  It hits what main signed, and what it
    # computes (--memo-refresh here) goes nowhere, even with credentials that could write.
    as_pull_request(monkeypatch, main)
    pull = elsewhere()
    pull.run(url).assert_outcomes(passed=2)
    assert pull.calls() == []
    pull.run(url, "--memo-refresh").assert_outcomes(passed=2)
    assert pull.calls() == ["data"]
    assert objects(bucket) == signed

    # A job with a key of its own stores a forged value under main's key...
    as_main(monkeypatch, intruder)
    monkeypatch.setenv("POISON", "666")
    elsewhere().run(url, "--memo-refresh").assert_outcomes(failed=1, passed=1)
    assert objects(bucket) != signed
    monkeypatch.delenv("POISON")
    # ...which main, on a machine without a local copy, refuses, recomputes and replaces.
    as_main(monkeypatch, main)
    fresh = elsewhere()
    result = fresh.run(url)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*refused the stored entry*not a trusted key*downloaded from s3*"])
    assert fresh.calls() == ["data"]
    as_pull_request(monkeypatch, main)
    pull = elsewhere()
    pull.run(url).assert_outcomes(passed=2)
    assert pull.calls() == []

    # An unsigned forged entry written straight into the bucket: refused too, by pull
    # requests (which compute the right value and store nothing) and by main.
    (memo,) = [key for key in objects(bucket) if key.endswith(".memo")]
    forged = elsewhere()
    monkeypatch.delenv("PYTEST_MEMO_TRUSTED_KEYS")
    monkeypatch.setenv("POISON", "666")
    forged.run("--memo-dir=.forged").assert_outcomes(failed=1, passed=1)
    monkeypatch.delenv("POISON")
    (local,) = forged.path.joinpath(".forged").glob("v1/entries/*/*.memo")
    bucket.client.put_object(Bucket=bucket.name, Key=memo, Body=local.read_bytes())
    for unsigned in ("with main's signature beside it", "without a signature"):
        as_pull_request(monkeypatch, main)
        pull = elsewhere()
        result = pull.run(url)
        result.assert_outcomes(passed=2, warnings=1)
        result.stdout.fnmatch_lines(["*refused the stored entry*"])
        assert pull.calls() == ["data"], unsigned
        bucket.client.delete_object(Bucket=bucket.name, Key=memo[: -len(".memo")] + ".sig")
    as_main(monkeypatch, main)
    fresh = elsewhere()
    result = fresh.run(url)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*refused the stored entry*not signed*"])
    as_pull_request(monkeypatch, main)
    pull = elsewhere()
    pull.run(url).assert_outcomes(passed=2)
    assert pull.calls() == []


# -- --memo-prune on a remote store: by last use, recorded in the remote ----------------

FIXTURES = """
@pytest.fixture(scope="session")
@pytest.mark.memo
def first():
    record("first")
    return 1


@pytest.fixture(scope="session")
@pytest.mark.memo
def second():
    record("second")
    return 2


@pytest.fixture(scope="session")
@pytest.mark.memo
def third():
    record("third")
    return 3
"""


@pytest.fixture
def fixtures(project: MemoSuite) -> MemoSuite:
    suite = project  # whose copies `elsewhere` makes
    suite.write("conftest.py", FIXTURES)
    (suite.path / "test_it.py").unlink()
    for name in ("first", "second", "third"):
        suite.write(f"test_{name}.py", f"def test_{name}({name}):\n    assert {name}\n")
    return suite


def server_clock_past(bucket: Bucket, seconds: float) -> None:
    """Wait until the server's clock is ``seconds`` past the newest object in the bucket:
    a run started then finds every object older than its start, whatever the precision
    of object times (whole seconds)."""
    listing = bucket.client.list_objects_v2(Bucket=bucket.name)["Contents"]
    newest = max(item["LastModified"] for item in listing)
    for _ in range(200):
        bucket.client.put_object(Bucket=bucket.name, Key="clock-probe", Body=b"")
        head = bucket.client.head_object(Bucket=bucket.name, Key="clock-probe")
        bucket.client.delete_object(Bucket=bucket.name, Key="clock-probe")
        if (head["LastModified"] - newest).total_seconds() > seconds:
            return
        time.sleep(0.1)
    raise AssertionError("the S3 server's clock does not advance")


def stored(bucket: Bucket) -> set[str]:
    """The keys of the entries in the bucket."""
    return {key.rpartition("/")[2][: -len(".memo")] for key in entry_keys(bucket.keys())}


def used(bucket: Bucket) -> set[str]:
    return {key.rpartition("/")[2] for key in bucket.keys() if "/v1/used/" in key}  # noqa: SIM118


@needs_s3
def test_prune_removes_remote_entries_that_no_run_used_within_the_grace_period(
    fixtures: MemoSuite, bucket: Bucket, elsewhere: Any
) -> None:
    url = f"--memo-dir={bucket.url()}"
    fixtures.run_subprocess(url, "test_first.py").assert_outcomes(passed=1)
    first = stored(bucket)
    fixtures.run_subprocess(url, "test_second.py").assert_outcomes(passed=1)
    (second,) = stored(bucket) - first
    server_clock_past(bucket, 4)

    # Another machine uses `first` (a hit, recorded in the remote) and prunes: with the
    # default grace period (7 days) `second`, used minutes ago, stays.
    result = elsewhere().run(url, "test_first.py", "--memo-prune")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["memo: 1 hit*0 unused removed (--memo-prune), 0 from the remote*"])
    assert stored(bucket) == first | {second}
    assert used(bucket) == first

    # With no grace at all, what this run did not use, and no run used since it began,
    # goes: `second`; `first`, used by this run, stays.
    result = elsewhere().run(url, "test_first.py", "--memo-prune", "--memo-prune-grace=0")
    result.stdout.fnmatch_lines(["memo: 1 hit*, 1 from the remote store"])
    assert stored(bucket) == first
    assert used(bucket) == first
    later = elsewhere()
    later.run(url).assert_outcomes(passed=3)
    assert later.calls() == ["second", "third"]


CONCURRENT_JOB = """
import os
import subprocess
import sys


def test_another_job_runs_meanwhile(first):
    # Another CI job, on another machine, while this run goes on: it uses `second` and
    # stores `third`.
    other = os.environ["OTHER_JOB"]
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", os.environ["MEMO_DIR"]]
    done = subprocess.run(command, cwd=other, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
"""


@needs_s3
def test_a_prune_keeps_what_a_concurrent_job_used_or_wrote(
    fixtures: MemoSuite, bucket: Bucket, elsewhere: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"--memo-dir={bucket.url()}"
    fixtures.run_subprocess(url, "test_first.py", "test_second.py").assert_outcomes(passed=2)
    before = stored(bucket)
    server_clock_past(bucket, 4)

    other = elsewhere()
    (other.path / "test_first.py").unlink()
    pruner = elsewhere()
    for name in ("test_second.py", "test_third.py"):
        (pruner.path / name).unlink()
    pruner.path.joinpath("test_concurrent.py").write_text(CONCURRENT_JOB)
    monkeypatch.setenv("OTHER_JOB", str(other.path))
    monkeypatch.setenv("MEMO_DIR", url)
    result = pruner.run(url, "--memo-prune", "--memo-prune-grace=0")
    result.assert_outcomes(passed=2)
    assert other.calls() == ["third"]  # it hit `second` and computed `third`
    result.stdout.fnmatch_lines(["memo: 1 hit*, 0 from the remote store"])
    after = stored(bucket)
    assert before < after  # `first` (this run's), `second` (used meanwhile), `third` (new)
    assert len(after) == 3

    # Once no one uses `second` and `third` any more, the next prune removes them.
    server_clock_past(bucket, 4)
    pruner.path.joinpath("test_concurrent.py").unlink()
    result = pruner.run(url, "--memo-prune", "--memo-prune-grace=0")
    result.stdout.fnmatch_lines(["memo: 1 hit*, 2 from the remote store"])
    assert len(stored(bucket)) == 1


@needs_s3
def test_a_bad_grace_period_is_a_usage_error(fixtures: MemoSuite, bucket: Bucket) -> None:
    result = fixtures.run_subprocess(f"--memo-dir={bucket.url()}", "--memo-prune-grace=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--memo-prune-grace / memo_prune_grace: 'soon' is not a duration*"]
    )


READS_A_FILE = """
import pathlib


@pytest.fixture
@pytest.mark.memo
def table():
    record("table")
    return (pathlib.Path(__file__).parent / "table.csv").read_text()
"""


@needs_s3
@pytest.mark.parametrize("mode", [(), ("--memo-read-only",)], ids=["writes", "read-only"])
def test_a_data_file_edited_in_another_checkout_recomputes_a_remote_entry(
    project: MemoSuite, bucket: Bucket, elsewhere: Any, mode: tuple[str, ...]
) -> None:
    # The files a value read travel with its entry: a checkout that downloads the entry
    # checks them, and an edit there recomputes (it served the stored value).  Read-only,
    # the manifest is read from the run's temporary downloads.
    project.write("conftest.py", READS_A_FILE)
    project.write("test_it.py", "def test_table(table):\n    print('TABLE', table)\n")
    project.write("table.csv", "a,b\n")
    url = bucket.url()
    project.run_subprocess(f"--memo-dir={url}").assert_outcomes(passed=1)
    other = elsewhere()
    other.path.joinpath("table.csv").write_text("a,b,c\n")
    result = other.run(f"--memo-dir={url}", "-s", *mode)
    result.assert_outcomes(passed=1)
    assert other.calls() == ["table"]
    result.stdout.fnmatch_lines(["*TABLE a,b,c"])
