"""Digests and opaque tokens every service makes the same way.

- `sha256_hex`: what is stored or keyed in place of a bearer token, an e-mail or an IP address.
- `b64url` / `unb64url`: URL-safe base64 without padding (tokens travel in URLs and cookies).
- `page_token` / `page_cursor`: an opaque `next_page_token` around a cursor string; a token this
  service did not issue is INVALID_PAGE_TOKEN, never a crash.
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
    """Raises ValueError on anything that is not URL-safe base64."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as error:
        raise ValueError("not URL-safe base64") from error


def page_token(cursor: str) -> str:
    return b64url(cursor.encode("utf-8"))


def page_cursor(token: str) -> str:
    try:
        return unb64url(token).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise invalid_page_token() from None


def invalid_page_token() -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN", "the page token is not one this service issued", field="page_token"
    )
