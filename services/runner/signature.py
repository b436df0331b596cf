"""The webhook signature: `X-Leadmesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>.<raw body>")>`, checked in constant time within a replay window.

The header comes from anyone who knows a webhook's address, before any authentication: whatever
it holds (`t=²`, `v1=é`, ten thousand commas) ends as SIGNATURE_INVALID (401), never as another
exception. Several `v1` values are allowed (rotating a secret); each is compared.

A signature that verifies is named by `digest` (SHA-256 of the expected HMAC, which covers the
time stamp and the body): the runner remembers it until the window has passed, so that a replay of
a captured request answers the first run instead of making another.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from services.kit.errors import Unauthenticated

SIGNATURE_HEADER = "x-leadmesh-signature"
# Twelve digits are 31 000 years of seconds: longer stamps are not times.
_STAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


def invalid(tolerance: int) -> Unauthenticated:
    return Unauthenticated(
        "SIGNATURE_INVALID",
        "X-Leadmesh-Signature must be t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.<body>'>, "
        f"made within {tolerance} seconds",
    )


@dataclass(frozen=True)
class Signature:
    # The time stamp as sent: the HMAC covers its text, not its value ("01" is not "1").
    stamp: str
    candidates: tuple[str, ...]

    @property
    def time(self) -> int:
        return int(self.stamp)


def parse(header: str | None, tolerance: int) -> Signature:
    """The header's time stamp and v1 candidates (lower-case hex); SIGNATURE_INVALID otherwise."""
    if not header:
        raise invalid(tolerance)
    stamps: list[str] = []
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        value = value.strip()
        if key == "t":
            stamps.append(value)
        elif key == "v1" and _HEX_SHA256.fullmatch(value):
            candidates.append(value.lower())
    if not stamps or not _STAMP.fullmatch(stamps[0]) or not candidates:
        raise invalid(tolerance)
    return Signature(stamps[0], tuple(candidates))


@dataclass(frozen=True)
class Verified:
    # SHA-256 (hex) naming this signature: what replays are recognised by.
    digest: str
    # Until when (unix seconds) the signature is within the window, and so could be replayed.
    valid_until: int


def verify(secret: str, header: str | None, body: bytes, now: float, tolerance: int) -> Verified:
    """The signature of a request made within `tolerance` seconds of `now`, or SIGNATURE_INVALID."""
    signature = parse(header, tolerance)
    if abs(now - signature.time) > tolerance:
        raise invalid(tolerance)
    expected = hmac.new(
        secret.encode("utf-8", "surrogatepass"),
        signature.stamp.encode("ascii") + b"." + body,
        hashlib.sha256,
    ).hexdigest()
    ok = False
    for candidate in signature.candidates:  # every one compared: no early exit
        ok |= hmac.compare_digest(expected, candidate)
    if not ok:
        raise invalid(tolerance)
    return Verified(
        hashlib.sha256(expected.encode("ascii")).hexdigest(), signature.time + tolerance
    )
