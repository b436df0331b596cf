"""Password hashing (PBKDF2-HMAC-SHA512 in passlib's modular crypt format) and password rules.

Hashes look like `$pbkdf2-sha512$<iterations>$<salt>$<checksum>`, salt and checksum in passlib's
"adapted base64" (standard alphabet with `.` for `+`, no padding), so passlib/libpass verify them.
`hashlib.pbkdf2_hmac` releases the GIL: hashing runs in a pool of one thread per core, so a login
never blocks the event loop and a login flood uses every core.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

from zxcvbn.frequency_lists import FREQUENCY_LISTS

from services.kit.errors import InvalidArgument

SCHEME = "pbkdf2-sha512"
SALT_BYTES = 16
MIN_LENGTH = 8
MAX_LENGTH = 1024


def ab64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("+", ".")


def ab64_decode(text: str) -> bytes:
    padded = text.replace(".", "+") + "=" * (-len(text) % 4)
    return base64.b64decode(padded, validate=True)


def normalize(password: str) -> str:
    """Any Unicode is welcome; NFKC makes the same password typed differently hash the same."""
    return unicodedata.normalize("NFKC", password)


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", normalize(password).encode("utf-8"), salt, iterations)


def encode_hash(password: str, iterations: int, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    checksum = _derive(password, salt, iterations)
    return f"${SCHEME}${iterations}${ab64_encode(salt)}${ab64_encode(checksum)}"


@dataclass(frozen=True)
class ParsedHash:
    iterations: int
    salt: bytes
    checksum: bytes


def parse_hash(stored: str) -> ParsedHash:
    parts = stored.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != SCHEME:
        raise ValueError("not a pbkdf2-sha512 modular crypt hash")
    return ParsedHash(int(parts[2]), ab64_decode(parts[3]), ab64_decode(parts[4]))


def check_hash(password: str, stored: str) -> bool:
    """Constant-time comparison of the derived key with the stored checksum."""
    parsed = parse_hash(stored)
    return hmac.compare_digest(_derive(password, parsed.salt, parsed.iterations), parsed.checksum)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    # The stored hash's parameters differ from the current setting: hash again after a login.
    needs_rehash: bool = False


class PasswordHasher:
    """Hashes and verifies off the event loop; verifies a dummy hash for unknown accounts so
    that an unknown e-mail costs the same time as a wrong password."""

    def __init__(self, iterations: int, threads: int, nice: int = 0) -> None:
        self.iterations = iterations
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="pbkdf2",
            initializer=_lower_priority,
            initargs=(nice,),
        )
        self._dummy = encode_hash(secrets.token_urlsafe(16), iterations)

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, encode_hash, password, self.iterations)

    async def verify(self, password: str, stored: str | None) -> Verdict:
        loop = asyncio.get_running_loop()
        target = stored or self._dummy
        try:
            ok = await loop.run_in_executor(self._pool, check_hash, password, target)
        except ValueError:  # a corrupt stored hash never matches
            return Verdict(False)
        if stored is None or not ok:
            return Verdict(False)
        parsed = parse_hash(stored)
        stale = parsed.iterations != self.iterations or len(parsed.salt) != SALT_BYTES
        return Verdict(True, needs_rehash=stale)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Hashing threads yield the CPU to the event loop: under a login flood, other requests (and
    the logins' own I/O) still get served at once, and the hashes use every cycle left over."""
    if nice and hasattr(os, "setpriority"):
        try:  # On Linux a thread id names one thread: only this thread is lowered.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            pass


@cache
def _common_passwords() -> frozenset[str]:
    return frozenset(FREQUENCY_LISTS["passwords"])


def check_rules(password: str, email: str, *, field: str = "password") -> None:
    """NIST SP 800-63B: 8 to 1024 characters, not the e-mail address, not a common password.
    Raises InvalidArgument naming the rule that failed."""
    normalized = normalize(password)
    if len(normalized) < MIN_LENGTH:
        raise InvalidArgument(
            "PASSWORD_TOO_SHORT", f"a password needs at least {MIN_LENGTH} characters", field=field
        )
    if len(normalized) > MAX_LENGTH:
        raise InvalidArgument(
            "PASSWORD_TOO_LONG", f"a password has at most {MAX_LENGTH} characters", field=field
        )
    folded = normalized.casefold()
    if email and email.casefold() in folded:
        raise InvalidArgument(
            "PASSWORD_CONTAINS_EMAIL", "a password must not contain the e-mail address", field=field
        )
    if folded in _common_passwords():
        raise InvalidArgument(
            "PASSWORD_TOO_COMMON", "this password is among the most common ones", field=field
        )
