"""Digests and opaque tokens every service makes the same way.

- `sha256_hex`: what is stored or keyed in place of a bearer token, an e-mail or an IP address.
- `b64url` / `unb64url`: URL-safe base64 without padding (tokens travel in URLs and cookies).
- `page_token` / `page_cursor`: an opaque `next_page_token` around a cursor string; a token this
  service did not issue is INVALID_PAGE_TOKEN, never a crash. `cursor_number` reads a decimal
  number out of a cursor the same way: ASCII digits only (`str.isdigit` is also true of `²`,
  which `int` refuses).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from services.kit.errors import InvalidArgument


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64url(text: str) -> bytes:
    """Raises ValueError (only) on anything that is not URL-safe base64."""
    if not text.isascii():
        raise ValueError("not URL-safe base64")
    try:
        return base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError) as error:
        raise ValueError("not URL-safe base64") from error


# Longer than any cursor a service issues (an ISO time and a UUID): anything longer is refused
# before it is decoded.
MAX_PAGE_TOKEN_CHARS = 200


def page_token(cursor: str) -> str:
    return b64url(cursor.encode("ascii"))


def page_cursor(token: str) -> str:
    """The cursor inside a token this service issued; INVALID_PAGE_TOKEN for anything else.
    Cursors are ASCII, so nothing else a token may decode to reaches a service's parser."""
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise invalid_page_token()
    try:
        cursor = unb64url(token).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        raise invalid_page_token() from None
    if not cursor.isprintable():
        raise invalid_page_token()
    return cursor


def cursor_number(text: str, *, low: int = 0, high: int = 2**63) -> int:
    """A decimal number in [low, high) from a cursor; INVALID_PAGE_TOKEN for anything else."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) < high:
        raise invalid_page_token()
    return int(text)


def invalid_page_token() -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN", "the page token is not one this service issued", field="page_token"
    )
