"""Who may write entries that others load: signatures of store entries.

An entry is a pickle, and loading a pickle runs code, so a store shared beyond one trusted
machine only loads entries signed by someone it trusts.  Two schemes, both writing a
``.sig`` file beside each entry:

- ``PYTEST_MEMO_SECRET``: an HMAC-SHA256 secret.  Symmetric: every job that can verify an
  entry can also forge one, so every job holding it must be trusted.
- Ed25519 keys (``cryptography``): ``PYTEST_MEMO_SIGNING_KEY`` holds a private key, given
  only to trusted jobs (the main branch), which sign what they store;
  ``PYTEST_MEMO_TRUSTED_KEYS`` holds public keys (several, for rotation), given to every
  job, which verify with them and cannot forge.  A job with public keys only stores
  nothing it computes: it loads what trusted jobs signed and computes the rest, so nothing
  a pull request computed ever reaches a store that the main branch trusts.

Make a key pair without writing code::

    python -m pytest_memo.store.signing keygen

(or ``openssl genpkey -algorithm ed25519 -out memo-key.pem``, and
``python -m pytest_memo.store.signing public memo-key.pem`` for its public key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import sys
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "SIGNING_KEY",
    "TRUSTED_KEYS",
    "Ed25519Signing",
    "HmacSigning",
    "Signing",
    "from_environment",
    "key_id",
]

SECRET = "PYTEST_MEMO_SECRET"
SIGNING_KEY = "PYTEST_MEMO_SIGNING_KEY"
TRUSTED_KEYS = "PYTEST_MEMO_TRUSTED_KEYS"
INSTALL = "pip install 'pytest-memo[signing]'"
# What an Ed25519 signature signs: the SHA-256 of this prefix, the entry's key and the bytes.
DOMAIN = b"pytest-memo entry signature, ed25519, v1\0"
SCHEME = "ed25519"
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


class Signing(Protocol):
    """How a store signs what it writes and checks what it loads."""

    # Whether this job may store entries (it holds what signs them).
    can_sign: bool
    # Completes "an entry not signed, and ...": what requires signatures.
    requirement: str

    def start(self, key: str) -> Hasher:
        """A hash of the entry's key, to be updated with the bytes signed."""

    def seal(self, hasher: Hasher) -> str:
        """The signature (one word of ASCII) of what ``hasher`` hashed."""

    def check(self, token: str, hasher: Hasher) -> str | None:
        """None if ``token`` is a valid signature of what ``hasher`` hashed, else why not."""


class HmacSigning:
    """``PYTEST_MEMO_SECRET``: whoever verifies can sign."""

    can_sign = True
    requirement = f"{SECRET} is set: it was not written with this secret, so it is not loaded"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def start(self, key: str) -> Hasher:
        return hmac.new(self._secret, key.encode(), hashlib.sha256)

    def seal(self, hasher: Hasher) -> str:
        return hasher.hexdigest()

    def check(self, token: str, hasher: Hasher) -> str | None:
        if hmac.compare_digest(token, hasher.hexdigest()):
            return None
        return (
            f"its signature does not match {SECRET} (signed with another secret, or "
            "modified since): it is not loaded"
        )


class Ed25519Signing:
    """Ed25519: entries are signed with a private key and loaded only if signed by one of
    the trusted public keys; without a private key, nothing is stored."""

    def __init__(
        self, private: Ed25519PrivateKey | None, trusted: dict[str, Ed25519PublicKey]
    ) -> None:
        self._private = private
        self._trusted = dict(trusted)
        self._own = ""
        if private is not None:
            public = private.public_key()
            self._own = key_id(public)
            self._trusted.setdefault(self._own, public)
        self.can_sign = private is not None
        self.requirement = (
            "only entries signed by a trusted key are loaded "
            f"({TRUSTED_KEYS}, {SIGNING_KEY}): it is not loaded"
        )

    @property
    def trusted(self) -> list[str]:
        """The ids of the trusted keys."""
        return sorted(self._trusted)

    def start(self, key: str) -> Hasher:
        return hashlib.sha256(DOMAIN + key.encode() + b"\0")

    def seal(self, hasher: Hasher) -> str:
        assert self._private is not None, "a job without a signing key stores nothing"
        signature = self._private.sign(hasher.digest())
        return f"{SCHEME}:{self._own}:{base64.b64encode(signature).decode()}"

    def check(self, token: str, hasher: Hasher) -> str | None:
        from cryptography.exceptions import InvalidSignature

        scheme, _, rest = token.partition(":")
        if scheme != SCHEME:
            return (
                "not signed with an Ed25519 key (written with PYTEST_MEMO_SECRET, or by "
                "another tool), and only entries signed by a trusted key are loaded: it "
                "is not loaded"
            )
        ident, _, text = rest.partition(":")
        public = self._trusted.get(ident)
        if public is None:
            return (
                f"signed by the key {ident[:16]!r}, which is not a trusted key (trusted: "
                f"{', '.join(map(repr, self.trusted)) or 'none'}; see {TRUSTED_KEYS}): it "
                "is not loaded"
            )
        try:
            public.verify(base64.b64decode(text, validate=True), hasher.digest())
        except (InvalidSignature, binascii.Error, ValueError):
            return (
                f"its signature by the trusted key {ident!r} does not match (modified since "
                "it was signed, or signed for another entry): it is not loaded"
            )
        return None


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: 16 hex digits of the SHA-256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- keys from the environment ---------------------------------------------------------


def from_environment(environ: dict[str, str] | None = None) -> Signing | None:
    """The signing of this job: from ``PYTEST_MEMO_SECRET``, or from
    ``PYTEST_MEMO_SIGNING_KEY`` / ``PYTEST_MEMO_TRUSTED_KEYS``; None if none is set.

    Raises pytest.UsageError for keys that cannot be read, for both schemes at once, and
    when the keys need ``cryptography`` and it is missing."""
    environ = dict(os.environ if environ is None else environ)
    secret = environ.get(SECRET, "")
    private_text = environ.get(SIGNING_KEY, "").strip()
    trusted_text = environ.get(TRUSTED_KEYS, "").strip()
    if not (private_text or trusted_text):
        return HmacSigning(secret.encode()) if secret else None
    if secret:
        raise pytest.UsageError(
            f"pytest-memo: {SECRET} and {SIGNING_KEY} / {TRUSTED_KEYS} are both set: use "
            f"one scheme (the keys: a job that verifies with them cannot forge an entry)"
        )
    crypto = _cryptography()
    private = _private_key(crypto, private_text) if private_text else None
    trusted: dict[str, Ed25519PublicKey] = {}
    for public in _public_keys(crypto, trusted_text):
        trusted[key_id(public)] = public
    return Ed25519Signing(private, trusted)


def _cryptography() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise pytest.UsageError(
            f"pytest-memo: {SIGNING_KEY} / {TRUSTED_KEYS} are set, and Ed25519 signatures "
            f"need the cryptography package: {INSTALL}"
        ) from None
    return serialization, ed25519


def _read_key_file(text: str, variable: str) -> bytes | None:
    """The contents of the file ``text`` names, if it names one."""
    if "\n" in text or len(text) > 4096 or text.startswith("-----"):
        return None
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as file:
            return file.read(1 << 16)
    except OSError as error:
        raise pytest.UsageError(f"pytest-memo: {variable}: cannot read {path}: {error}") from None


def _raw(text: str) -> bytes | None:
    """32 bytes in base64 (or hex), or None."""
    for decode in (lambda t: base64.b64decode(t, validate=True), bytes.fromhex):
        try:
            raw = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 32:
            return raw
    return None


def _private_key(crypto: Any, text: str) -> Ed25519PrivateKey:
    serialization, ed25519 = crypto
    data = _read_key_file(text, SIGNING_KEY)
    source = f"the file {text}" if data is not None else "its value"
    data = data.strip() if data is not None else text.encode()
    problem = "not an Ed25519 private key (PEM, OpenSSH, or 32 bytes in base64)"
    key: Any = None
    try:
        if data.startswith(b"-----BEGIN OPENSSH"):
            key = serialization.load_ssh_private_key(data, password=None)
        elif data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        elif (raw := _raw(data.decode("ascii", "replace").strip())) is not None:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(raw)
    except TypeError:
        problem = "an encrypted key: give it without a passphrase (keep it in a CI secret)"
    except (ValueError, UnicodeDecodeError):
        pass
    except Exception as error:  # cryptography's own errors for unsupported key types
        problem = f"{type(error).__name__}: {error}"
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        if key is not None:
            problem = f"a {type(key).__name__.replace('_', '')}, not an Ed25519 key"
        # The value itself is a secret: never part of the message.
        raise pytest.UsageError(f"pytest-memo: {SIGNING_KEY}: {source} is {problem}")
    return key  # type: ignore[no-any-return]


def _public_keys(crypto: Any, text: str, depth: int = 0) -> list[Ed25519PublicKey]:
    """The public keys in ``text``: PEM blocks, ``ssh-ed25519`` lines, base64 raw keys and
    names of files holding any of these, separated by commas, spaces or new lines."""
    serialization, ed25519 = crypto
    keys: list[Any] = []
    items: list[tuple[str, bytes]] = []
    for match in _PEM.finditer(text):
        items.append((match.group(0)[:40] + "...", match.group(0).encode()))
    rest = _PEM.sub(" ", text)
    for line in re.split(r"[\n,;]", rest):
        line = line.strip()
        if line.startswith("ssh-ed25519 "):
            items.append((line[:40], " ".join(line.split()[:2]).encode()))
            continue
        for token in line.split():
            data = _read_key_file(token, TRUSTED_KEYS) if depth == 0 else None
            if data is not None:
                found = _public_keys(crypto, data.decode("ascii", "replace"), depth + 1)
                if not found:
                    raise pytest.UsageError(
                        f"pytest-memo: {TRUSTED_KEYS}: the file {token} holds no public key"
                    )
                keys.extend(found)
            else:
                items.append((token, token.encode()))
    for shown, data in items:
        key: Any = None
        try:
            if data.startswith(b"ssh-"):
                key = serialization.load_ssh_public_key(data)
            elif data.startswith(b"-----BEGIN"):
                key = serialization.load_pem_public_key(data)
            elif (raw := _raw(data.decode("ascii", "replace"))) is not None:
                key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except Exception:
            key = None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise pytest.UsageError(
                f"pytest-memo: {TRUSTED_KEYS}: {shown[:60]!r} is not an Ed25519 public key "
                "(PEM, ssh-ed25519, 32 bytes in base64, or the name of a file holding one); "
                "separate several keys with commas, spaces or new lines"
            )
        keys.append(key)
    return keys


# -- python -m pytest_memo.store.signing -------------------------------------------------

USAGE = """\
usage: python -m pytest_memo.store.signing keygen [PRIVATE_KEY_FILE]
       python -m pytest_memo.store.signing public [PRIVATE_KEY_FILE]

keygen  make an Ed25519 key pair: prints the private key (for PYTEST_MEMO_SIGNING_KEY,
        a protected CI secret of trusted jobs only) and the public key (for
        PYTEST_MEMO_TRUSTED_KEYS, every job); with a file name, the private key is
        written there (mode 600, as PEM) instead of printed
public  print the public key of a private key: of the file given (PEM, OpenSSH, or base64;
        from `openssl genpkey -algorithm ed25519`, say), or of PYTEST_MEMO_SIGNING_KEY
"""


def _public_text(private: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return base64.b64encode(raw).decode()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("keygen", "public") or len(argv) > 2:
        sys.stderr.write(USAGE)
        return 2
    try:
        crypto = _cryptography()
        serialization, ed25519 = crypto
        if argv[0] == "keygen":
            private = ed25519.Ed25519PrivateKey.generate()
            if len(argv) == 2:
                pem = private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                descriptor = os.open(argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "wb") as file:
                    file.write(pem)
                print(f"# private key written to {argv[1]}: keep it secret")
            else:
                raw = private.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
                print("# the private key: a protected CI secret, for trusted jobs only")
                print(f"{SIGNING_KEY}={base64.b64encode(raw).decode()}")
        else:
            source = argv[1] if len(argv) == 2 else os.environ.get(SIGNING_KEY, "").strip()
            if not source:
                sys.stderr.write(f"error: give a private key file, or set {SIGNING_KEY}\n")
                return 2
            if len(argv) == 2 and not os.path.isfile(source):
                sys.stderr.write(f"error: {source}: no such file\n")
                return 2
            private = _private_key(crypto, source)
        print(f"# the public key (id {key_id(private.public_key())}): for every job")
        print(f"{TRUSTED_KEYS}={_public_text(private)}")
    except pytest.UsageError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    except FileExistsError:
        sys.stderr.write(f"error: {argv[1]} exists: not overwritten\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
