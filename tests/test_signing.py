"""Signed entries: with PYTEST_MEMO_SECRET set, nothing unsigned or foreign-signed is unpickled."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from memo_suite import MemoSuite

import pytest_memo

CONFTEST = """
@pytest.fixture
@pytest.mark.memo
def data():
    record("data")
    return {"answer": 42}
"""
TEST = "def test_data(data):\n    assert data == {'answer': 42}\n"


@pytest.fixture
def signed(suite: MemoSuite, monkeypatch: pytest.MonkeyPatch) -> MemoSuite:
    suite.write("conftest.py", CONFTEST)
    suite.write("test_it.py", TEST)
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    return suite


def forge(suite: MemoSuite, value: object) -> None:
    """Replace the stored value by another, in a perfectly valid file (checksums and all)."""
    (entry,) = suite.entries()
    info, _ = pytest_memo.load(entry)
    pytest_memo.dump((info, value), entry)


def test_signed_entries_hit_and_carry_a_signature(signed: MemoSuite) -> None:
    signed.run().assert_outcomes(passed=1)
    signed.run().assert_outcomes(passed=1)
    assert signed.calls() == ["data"]
    (entry,) = signed.entries()
    assert entry.with_suffix(".sig").exists()


def test_a_tampered_entry_is_never_served(signed: MemoSuite) -> None:
    signed.run().assert_outcomes(passed=1)
    forge(signed, {"answer": "forged"})
    result = signed.run()
    result.assert_outcomes(passed=1, warnings=1)  # the test saw the real value
    result.stdout.fnmatch_lines(["*signature does not match PYTEST_MEMO_SECRET*"])
    assert signed.calls() == ["data", "data"]
    signed.run().assert_outcomes(passed=1)  # re-signed: a hit again
    assert signed.calls() == ["data", "data"]


def test_an_entry_signed_with_another_secret_is_recomputed(
    signed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed.run().assert_outcomes(passed=1)
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "another secret")
    result = signed.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*signature does not match*"])
    assert signed.calls() == ["data", "data"]


def test_an_unsigned_entry_is_refused_when_a_secret_is_set(
    signed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_MEMO_SECRET")
    signed.run().assert_outcomes(passed=1)
    assert not signed.entries()[0].with_suffix(".sig").exists()
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    result = signed.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*not signed, and PYTEST_MEMO_SECRET is set*"])
    assert signed.calls() == ["data", "data"]


def test_without_a_secret_signatures_are_not_required(
    signed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed.run().assert_outcomes(passed=1)
    monkeypatch.delenv("PYTEST_MEMO_SECRET")
    signed.run().assert_outcomes(passed=1)
    assert signed.calls() == ["data"]
    # ...which is exactly the risk of an unsigned shared store: a valid forged file is served.
    forge(signed, {"answer": 42, "forged": True})
    signed.write("test_it.py", "def test_data(data):\n    assert 'forged' in data\n")
    signed.run().assert_outcomes(passed=1)


# -- Ed25519: trusted jobs sign, the others verify and cannot forge ---------------------


class Keys:
    """A key pair made as users make it: ``python -m pytest_memo.store.signing keygen``."""

    def __init__(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "pytest_memo.store.signing", "keygen"],
            capture_output=True,
            text=True,
            check=True,
        )
        values = dict(
            line.split("=", 1) for line in result.stdout.splitlines() if not line.startswith("#")
        )
        self.private = values["PYTEST_MEMO_SIGNING_KEY"]
        self.public = values["PYTEST_MEMO_TRUSTED_KEYS"]


def as_main(monkeypatch: pytest.MonkeyPatch, keys: Keys) -> None:
    monkeypatch.setenv("PYTEST_MEMO_SIGNING_KEY", keys.private)
    monkeypatch.delenv("PYTEST_MEMO_TRUSTED_KEYS", raising=False)


def as_pull_request(monkeypatch: pytest.MonkeyPatch, *trusted: Keys) -> None:
    monkeypatch.delenv("PYTEST_MEMO_SIGNING_KEY", raising=False)
    monkeypatch.setenv("PYTEST_MEMO_TRUSTED_KEYS", ",".join(keys.public for keys in trusted))


@pytest.fixture
def keyed(suite: MemoSuite) -> MemoSuite:
    suite.write("conftest.py", CONFTEST)
    suite.write("test_it.py", TEST)
    return suite


def test_a_job_with_the_public_key_only_hits_what_main_signed(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = Keys()
    as_main(monkeypatch, main)
    keyed.run().assert_outcomes(passed=1)
    (entry,) = keyed.entries()
    assert entry.with_suffix(".sig").read_text().startswith("ed25519:")
    as_pull_request(monkeypatch, main)
    keyed.run().assert_outcomes(passed=1)
    assert keyed.calls() == ["data"]


def test_a_job_with_the_public_key_only_stores_nothing_it_computes(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = Keys()
    as_pull_request(monkeypatch, main)
    result = keyed.run()
    result.assert_outcomes(passed=1)  # no warning: computing is what it is for
    assert keyed.entries() == []
    keyed.run().assert_outcomes(passed=1)
    assert keyed.calls() == ["data", "data"]
    as_main(monkeypatch, main)  # main stores, the pull request job then hits
    keyed.run().assert_outcomes(passed=1)
    as_pull_request(monkeypatch, main)
    keyed.run().assert_outcomes(passed=1)
    assert keyed.calls() == ["data", "data", "data"]


POISONABLE = """
# The forger's lever: a variable named at run time, which the key cannot see (a
# variable read by name would enter the key and give the forged entry a key of its own).
FORGED_BY = "".join(["POI", "SON"])
import os


@pytest.fixture
@pytest.mark.memo
def data():
    record("data")
    return {"answer": int(os.environ.get(FORGED_BY, "42"))}
"""


def test_an_entry_signed_by_an_untrusted_key_is_refused_and_never_served(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed.write("conftest.py", POISONABLE)
    main, intruder = Keys(), Keys()
    as_main(monkeypatch, main)
    keyed.run().assert_outcomes(passed=1)
    # A job with its own key stores a forged value under the same key.
    as_main(monkeypatch, intruder)
    monkeypatch.setenv("POISON", "666")
    keyed.run("--memo-refresh").assert_outcomes(failed=1)
    monkeypatch.delenv("POISON")
    as_main(monkeypatch, main)
    result = keyed.run()
    result.assert_outcomes(passed=1, warnings=1)  # the test saw 42, not the forged value
    result.stdout.fnmatch_lines(
        ["*refused the stored entry of fixture 'data'*not a trusted key*not loaded*"]
    )
    keyed.run().assert_outcomes(passed=1)  # main signed its own value: a hit again
    as_pull_request(monkeypatch, main)
    keyed.run().assert_outcomes(passed=1)
    assert keyed.calls() == ["data", "data", "data"]


def test_unsigned_and_hmac_entries_are_refused_by_key_holders(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = Keys()
    keyed.run().assert_outcomes(passed=1)  # no signing at all
    as_pull_request(monkeypatch, main)
    result = keyed.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*not signed, and only entries signed by a trusted key*"])
    as_pull_request(monkeypatch)
    monkeypatch.delenv("PYTEST_MEMO_TRUSTED_KEYS")
    monkeypatch.setenv("PYTEST_MEMO_SECRET", "team secret")
    keyed.run().assert_outcomes(passed=1)  # signed with the secret (the refused one went)
    monkeypatch.delenv("PYTEST_MEMO_SECRET")
    as_main(monkeypatch, main)
    result = keyed.run()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*not signed with an Ed25519 key*"])
    assert keyed.calls() == ["data", "data", "data", "data"]


def test_several_trusted_keys_allow_rotation(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Keys(), Keys()
    as_main(monkeypatch, old)
    keyed.run().assert_outcomes(passed=1)
    # The new key signs; the old one is still trusted until its entries are gone.
    as_main(monkeypatch, new)
    monkeypatch.setenv("PYTEST_MEMO_TRUSTED_KEYS", f"{old.public}\n{new.public}")
    keyed.run().assert_outcomes(passed=1)
    as_pull_request(monkeypatch, new, old)
    keyed.run().assert_outcomes(passed=1)
    assert keyed.calls() == ["data"]


def test_keys_can_be_pem_files_made_by_openssl(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    private = tmp_path / "memo-key.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True
    )
    public = tmp_path / "memo-key.pub.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True
    )
    monkeypatch.setenv("PYTEST_MEMO_SIGNING_KEY", str(private))
    keyed.run().assert_outcomes(passed=1)
    monkeypatch.delenv("PYTEST_MEMO_SIGNING_KEY")
    monkeypatch.setenv("PYTEST_MEMO_TRUSTED_KEYS", str(public))
    keyed.run().assert_outcomes(passed=1)
    # The public key printed from the private one is the same key.
    printed = subprocess.run(
        [sys.executable, "-m", "pytest_memo.store.signing", "public", str(private)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = [line for line in printed.splitlines() if not line.startswith("#")]
    monkeypatch.setenv("PYTEST_MEMO_TRUSTED_KEYS", line.split("=", 1)[1])
    keyed.run().assert_outcomes(passed=1)
    assert keyed.calls() == ["data"]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"PYTEST_MEMO_SIGNING_KEY": "not a key"},
            "*PYTEST_MEMO_SIGNING_KEY: its value is not an Ed25519 private key*",
        ),
        (
            {"PYTEST_MEMO_TRUSTED_KEYS": "AAAA"},
            "*PYTEST_MEMO_TRUSTED_KEYS: 'AAAA' is not an Ed25519 public key*",
        ),
        (
            {"PYTEST_MEMO_SECRET": "s", "PYTEST_MEMO_TRUSTED_KEYS": "x"},
            "*PYTEST_MEMO_SECRET and PYTEST_MEMO_SIGNING_KEY / PYTEST_MEMO_TRUSTED_KEYS are "
            "both set*",
        ),
    ],
)
def test_unusable_keys_are_a_usage_error(
    keyed: MemoSuite,
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    message: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    result = keyed.run_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "not a key" not in result.stderr.str()  # a private key is never echoed


def test_without_cryptography_keys_are_a_usage_error_naming_the_extra(
    keyed: MemoSuite, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin loaded first makes cryptography impossible to import, as if not installed.
    keyed.write("no_cryptography.py", "import sys\nsys.modules['cryptography'] = None\n")
    monkeypatch.setenv("PYTEST_MEMO_TRUSTED_KEYS", Keys().public)
    monkeypatch.setenv("PYTHONPATH", str(keyed.path))
    result = keyed.run_subprocess("-p", "no_cryptography")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*need the cryptography package: pip install 'pytest-memo?signing?'"]
    )
    assert "Traceback" not in result.stderr.str()


def test_keygen_writes_a_private_key_file_readable_only_by_its_owner(tmp_path: Path) -> None:
    target = tmp_path / "memo-key.pem"
    command = [sys.executable, "-m", "pytest_memo.store.signing", "keygen", str(target)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "PYTEST_MEMO_TRUSTED_KEYS=" in result.stdout
    assert "PRIVATE KEY" not in result.stdout
    assert target.stat().st_mode & 0o777 == 0o600
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 2
    assert "exists: not overwritten" in again.stderr
