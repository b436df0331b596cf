"""Envelope encryption: versioned key-encryption keys (KEKs) wrap random per-user data keys; data
keys seal secrets. Everything is AES-256-GCM from `cryptography`, with a fresh 96-bit nonce per
encryption and associated data that binds each ciphertext to where it belongs, so a ciphertext
copied to another row or another user fails to open.

A data key is random, never derived from a master key: destroying its (wrapped) copy destroys it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("leadmesh.vault.keys")

NONCE_BYTES = 12
KEY_BYTES = 32
FORMAT_VERSION = 1


class KeyUnavailable(Exception):
    """The KEK version that wrapped a data key is not (or no longer) loaded."""


class Tampered(Exception):
    """A ciphertext did not authenticate: altered, moved to another row, or the wrong key."""


def cipher(key: bytes) -> AESGCM:
    """A key made ready to seal and unseal with, for a key used again and again."""
    return AESGCM(key)


def _ready(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else cipher(key)


def seal(key: bytes | AESGCM, plaintext: bytes, associated: bytes) -> bytes:
    """`key`: a key, or its `cipher`."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _ready(key).encrypt(nonce, plaintext, associated)


def unseal(key: bytes | AESGCM, sealed: bytes, associated: bytes) -> bytes:
    try:
        return _ready(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except (InvalidTag, ValueError):
        raise Tampered from None


def secret_aad(user_id: str, credential_id: str, kind: str, version: int = FORMAT_VERSION) -> bytes:
    """`version`: the format of the sealed plaintext (a row's `format_version`)."""
    return f"leadmesh-vault|secret|v{version}|{user_id}|{credential_id}|{kind}".encode()


# What a wrapped key is (its associated data says so): a user's data key, a user's owner key of
# execution data, or a category's day key (execution_keys.py). One kind never unwraps as another.
DATA_KEY, OWNER_KEY, DAY_KEY = "data-key", "owner-key", "day-key"


def data_key_aad(subject: str, version: str, kind: str = DATA_KEY) -> bytes:
    """`subject`: whose key (a user id; a day key's "participant|category|day")."""
    return f"leadmesh-vault|{kind}|v{FORMAT_VERSION}|{subject}|{version}".encode()


def key_subject(kind: str, ids: Mapping[str, str]) -> str:
    """The subject a wrapped key of `kind` is bound to, from the columns naming it."""
    if kind == DAY_KEY:
        return f"{ids['participant']}|{ids['category']}|{ids['day']}"
    return ids["user_id"]


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


@dataclass(frozen=True)
class KeyFile:
    current: str
    keys: dict[str, bytes]

    @classmethod
    def parse(cls, text: str) -> KeyFile:
        """ValueError naming what is wrong, never quoting a key."""
        try:
            document = json.loads(text)
        except ValueError as error:
            raise ValueError(f"not valid JSON ({error})") from None
        if not (
            isinstance(document, dict)
            and isinstance(document.get("current"), str)
            and isinstance(document.get("keys"), dict)
            and all(isinstance(k, str) for k in document["keys"].values())
        ):
            raise ValueError('expected {"current": "<version>", "keys": {"<version>": "<base64>"}}')
        try:
            keys = {v: base64.b64decode(k, validate=True) for v, k in document["keys"].items()}
        except ValueError:
            raise ValueError("every KEK must be base64") from None
        if document["current"] not in keys:
            raise ValueError("the current KEK version is not among the keys")
        if any(len(k) != KEY_BYTES for k in keys.values()):
            raise ValueError("every KEK must be 32 bytes (AES-256)")
        return cls(document["current"], keys)

    def dumps(self) -> str:
        keys = {v: base64.b64encode(k).decode() for v, k in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2) + "\n"


def _next_version(keys: dict[str, bytes]) -> str:
    numbers = [int(v[1:]) for v in keys if v.startswith("v") and v[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


class KeyRing:
    """The loaded KEK versions. `managed`: the vault generated the file under var/ and may add and
    retire versions itself; otherwise the keys are supplied (inline or a file the operator owns)."""

    def __init__(self, *, inline: str | None, path: Path | None, managed: bool) -> None:
        self._inline, self._path, self.managed = inline, path, managed
        self._lock = threading.Lock()
        self._use(self._read())

    def _use(self, file: KeyFile) -> None:
        # Each KEK's cipher made once: making one (key schedule, OpenSSL's cipher lookup) costs
        # more than the unwrap it serves, the busiest call of a resolve.
        self._ciphers = {version: cipher(key) for version, key in file.keys.items()}
        self._file = file

    @staticmethod
    def check_setting(value: str) -> None:
        """ValueError when a supplied VAULT_MASTER_KEYS (inline JSON or a file) cannot be used,
        so that start-up refuses it in one line before anything starts."""
        if value.lstrip().startswith("{"):
            KeyFile.parse(value)
            return
        try:
            text = Path(value).read_text()
        except OSError as error:
            raise ValueError(f"cannot read the key file ({error.strerror})") from None
        KeyFile.parse(text)

    @classmethod
    def from_setting(cls, value: str | None, var_dir: Path) -> KeyRing:
        if value and value.lstrip().startswith("{"):
            return cls(inline=value, path=None, managed=False)
        if value:
            return cls(inline=None, path=Path(value), managed=False)
        path = var_dir / "master-keys.json"
        if not path.exists():
            log.warning(
                "generated a master key file under var/: fine on one machine; production must "
                "supply VAULT_MASTER_KEYS from a secrets manager",
                extra={"path": str(path)},
            )
            _write_private(path, KeyFile("v1", {"v1": secrets.token_bytes(KEY_BYTES)}).dumps())
        return cls(inline=None, path=path, managed=True)

    def _read(self) -> KeyFile:
        text = self._inline if self._inline is not None else self._path.read_text()  # type: ignore[union-attr]
        return KeyFile.parse(text)

    def reload(self) -> None:
        with self._lock:
            self._use(self._read())

    @property
    def current(self) -> str:
        return self._file.current

    @property
    def versions(self) -> list[str]:
        return sorted(self._file.keys, key=lambda v: (len(v), v))

    def _kek(self, version: str) -> AESGCM:
        kek = self._ciphers.get(version)
        if kek is None and self._path is not None:
            self.reload()  # another process may have added it (a rotation)
            kek = self._ciphers.get(version)
        if kek is None:
            raise KeyUnavailable(version)
        return kek

    def wrap(self, subject: str, key: bytes, kind: str = DATA_KEY) -> tuple[str, bytes]:
        version = self.current
        return version, seal(self._kek(version), key, data_key_aad(subject, version, kind))

    def unwrap(self, subject: str, version: str, wrapped: bytes, kind: str = DATA_KEY) -> bytes:
        return unseal(self._kek(version), wrapped, data_key_aad(subject, version, kind))

    def add_version(self) -> str:
        """A new random KEK made current (managed key files only)."""
        with self._lock:
            on_disk = self._read()
            version = _next_version(on_disk.keys)
            keys = {**on_disk.keys, version: secrets.token_bytes(KEY_BYTES)}
            self._use(KeyFile(version, keys))
            _write_private(self._path, self._file.dumps())  # type: ignore[arg-type]
        log.info("new KEK version is current", extra={"version": version})
        return version

    def remove_version(self, version: str) -> None:
        with self._lock:
            on_disk = self._read()
            keys = {v: k for v, k in on_disk.keys.items() if v != version}
            self._use(KeyFile(on_disk.current, keys))
            _write_private(self._path, self._file.dumps())  # type: ignore[arg-type]


def _write_private(path: Path, text: str) -> None:
    """Writes a key file readable by its owner only, atomically (a crash leaves old or new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp-{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
