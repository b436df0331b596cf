"""The kinds of credential, the shape of each one's secret object, and how a secret is encoded
before it is sealed.

Errors name the offending field, never its value: values are secrets.

Values that go into an HTTP request's header or query (an API key, an OAuth access token, a login's
Basic credentials) refuse control characters (C0 and DEL, RFC 9110 §5.5; RFC 7617 §2 for Basic):
the HTTP client would refuse the request, and its error, which quotes the header, would carry the
secret into the run's error, its notification and its e-mail. A value sent as a header field
itself must also be latin-1 (HTTP field values are octets; h11 encodes them so).

Encodings (the credential's `format_version`, bound into the ciphertext's associated data):
1 is the secret as JSON (rows sealed before format 2, still read); 2 is a serialized
`google.protobuf.Struct`, the very message a resolve sends, so that serving it takes one parse in
C instead of a JSON parse and a Struct built field by field in Python.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from services.kit.errors import InvalidArgument

KINDS = ("api_key", "login", "oauth2")
_HEADER = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")  # an HTTP field name (RFC 9110)
_QUERY = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
MAX_SECRET_CHARS = 16_384


def _bad(field: str, why: str) -> InvalidArgument:
    return InvalidArgument("INVALID_SECRET", f"secret.{field} {why}", field=f"secret.{field}")


def _no_controls(value: str) -> bool:
    return not any(ch < " " or ch == "\x7f" for ch in value)


def _sendable(field: str, value: str | None, *, header: bool) -> str | None:
    """The value, if it can travel in a request's header (header=True) or query as it is."""
    if value is None:
        return None
    if not _no_controls(value):
        raise _bad(field, "must not contain control characters (a pasted newline?)")
    if header and not value.isascii():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise _bad(field, "must be latin-1 text: it is sent in an HTTP header") from None
    return value


def _text(secret: dict[str, Any], field: str, *, required: bool = True) -> str | None:
    value = secret.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(field, "must be a non-empty string")
    if len(value) > MAX_SECRET_CHARS:
        raise _bad(field, f"must have at most {MAX_SECRET_CHARS} characters")
    if "\x00" in value:
        raise _bad(field, "must not contain NUL characters")
    return value


def _only(secret: dict[str, Any], allowed: set[str]) -> None:
    for field in secret:
        if field not in allowed:
            raise _bad(field, "is not a field of this kind of credential")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidArgument("INVALID_KIND", f"kinds are: {', '.join(KINDS)}", field="kind")
    return kind


def validate(kind: str, secret: dict[str, Any]) -> dict[str, Any]:
    """The secret in its stored form; raises INVALID_SECRET naming the field that is wrong."""
    check_kind(kind)
    if kind == "api_key":
        _only(secret, {"key", "header", "query"})
        key = _text(secret, "key")
        header, query = secret.get("header"), secret.get("query")
        if (header is None) == (query is None):
            raise _bad("header", "or secret.query: exactly one says where the key goes")
        if header is not None:
            if not isinstance(header, str) or not _HEADER.match(header):
                raise _bad("header", "must be an HTTP header name")
            return {"key": _sendable("key", key, header=True), "header": header}
        if not isinstance(query, str) or not _QUERY.match(query):
            raise _bad("query", "must be a query parameter name")
        # Percent-encoded in the URL, so any text travels; control characters still refused.
        return {"key": _sendable("key", key, header=False), "query": query}
    if kind == "login":
        _only(secret, {"username", "password"})
        # Base64-encoded into `Authorization: Basic` (UTF-8, RFC 7617), which forbids controls.
        return {
            "username": _sendable("username", _text(secret, "username"), header=False),
            "password": _sendable("password", _text(secret, "password"), header=False),
        }
    _only(secret, {"access_token", "refresh_token", "expires_at", "scopes", "token_type"})
    access_token = _sendable("access_token", _text(secret, "access_token"), header=True)
    stored: dict[str, Any] = {"access_token": access_token}
    # Sent in a form body, but a control character in it is as much a pasting mistake.
    refresh = _sendable(
        "refresh_token", _text(secret, "refresh_token", required=False), header=False
    )
    if refresh is not None:
        stored["refresh_token"] = refresh
    expires_at = secret.get("expires_at")
    if expires_at is not None:
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            raise _bad("expires_at", "must be a number of seconds since 1970")
        stored["expires_at"] = int(expires_at)
    scopes = secret.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        raise _bad("scopes", "must be a list of strings")
    stored["scopes"] = scopes
    return stored


def hint(kind: str, secret: dict[str, Any]) -> str:
    """What helps the owner recognise a credential without revealing it."""
    if kind == "api_key":
        key = secret["key"]
        return f"…{key[-4:]}" if len(key) >= 16 else ""
    if kind == "login":  # the username's end, never anything of the password
        username = secret["username"]
        return f"…{username[-4:]}" if len(username) >= 8 else ""
    return ""


JSON_FORMAT, STRUCT_FORMAT = 1, 2
SECRET_FORMAT = STRUCT_FORMAT  # what secrets are sealed as


class Undecodable(Exception):
    """A plaintext that is not a secret in the format its row names."""


def encode(secret: dict[str, Any]) -> bytes:
    """A (validated) secret as the plaintext to seal, in `SECRET_FORMAT`."""
    message = struct_pb2.Struct()
    message.update(secret)
    return message.SerializeToString(deterministic=True)


def decode(plaintext: bytes, format_version: int) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    try:
        if format_version == STRUCT_FORMAT:
            message.ParseFromString(plaintext)
        elif format_version == JSON_FORMAT:
            message.update(json.loads(plaintext))
        else:
            raise Undecodable(f"no secret format {format_version}")
    except (DecodeError, ValueError, TypeError, AttributeError):
        raise Undecodable(f"not a secret in format {format_version}") from None
    return message


def as_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A decoded secret as plain values (whole numbers as int, as validate stores them)."""
    return {key: _plain(value) for key, value in message.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, struct_pb2.Struct):
        return as_dict(value)
    if isinstance(value, struct_pb2.ListValue):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
