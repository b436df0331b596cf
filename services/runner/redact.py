"""What the webhooks log and a run's stored event keep of a request's headers and query string.

A value whose name says it may be a secret is replaced by `[redacted]`, and the names replaced are
listed with the entry, so the owner sees that something was removed rather than wondering.
Names are matched by pattern, not by a list of known headers: senders invent names
(`X-Shopify-Hmac-Sha256`, `X-Access-Key`, `?api_key=`), so any name holding one of `_WORDS`,
case-insensitively and whatever separates its parts (`api-key`, `api_key`, `API.Key`, `apikey`),
is redacted. Over-redacting a harmless value costs a line of debugging; keeping a secret in a log
kept 7 days costs the secret.

Every function here takes any text a sender can make and never raises.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
_WORDS = ("auth", "token", "key", "secret", "signature", "hmac", "passw", "pwd", "session",
          "cookie", "csrf", "credential", "jwt", "bearer")  # fmt: skip
# Names holding a word above whose value is known not to be a secret and helps the owner debug.
_NOT_SECRET = frozenset({"idempotencykey"})
_ANY_WORD = re.compile("|".join(_WORDS))


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a header or query parameter of this name may carry a secret. Names repeat from
    webhook to webhook: the answer is remembered (bounded, so odd names cannot grow it)."""
    if name.isascii():  # every HTTP header name, and nearly every query name: the fast way
        folded = name.lower().translate(_ASCII_SEPARATORS)
    else:  # NFKC first, so that full-width or ligature spellings fold to the plain word
        normal = unicodedata.normalize("NFKC", name).casefold()
        folded = "".join(ch for ch in normal if ch.isalnum())
    return folded not in _NOT_SECRET and _ANY_WORD.search(folded) is not None


_ASCII_SEPARATORS = {c: None for c in range(128) if not chr(c).isalnum()}


@dataclass(frozen=True)
class Redacted:
    # [name lower-cased, value] pairs, in the order received.
    headers: list[list[str]]
    # The query string as received, but for the values replaced.
    query: str
    # The names whose values were replaced (headers lower-cased, query names decoded), each once.
    names: list[str]


# A webhook's header as the runner keeps it from its API to the store: (name lower-cased, value),
# in the order received; the webhooks log stores these pairs (as JSON arrays) after redaction.
Header = tuple[str, str]


def received(headers: Iterable[tuple[str, str]]) -> list[Header]:
    """Headers as they came (any case) in the runner's one form: the only lower-casing."""
    return [(name.lower(), value) for name, value in headers]


def header_value(headers: list[Header], name: str) -> str | None:
    """The value of the header `name` (lower-case); the last one when it came more than once."""
    for candidate, value in reversed(headers):
        if candidate == name:
            return value
    return None


def redact(headers: Iterable[tuple[str, str]], query: str) -> Redacted:
    return redact_received(received(headers), query)


def redact_received(headers: list[Header], query: str) -> Redacted:
    """`redact` of headers already in the runner's form (names lower-cased)."""
    names: dict[str, None] = {}
    pairs = []
    for name, value in headers:
        if is_secret_name(name):
            names[name] = None
            value = REDACTED
        pairs.append([name, value])
    return Redacted(pairs, _redact_query(query, names), list(names))


def _redact_query(query: str, names: dict[str, None]) -> str:
    # Piece by piece on the raw text (as parse_qs splits it), so everything not redacted stays
    # byte for byte what the sender sent.
    pieces = []
    for piece in query.split("&"):
        raw_name, equals, value = piece.partition("=")
        name = unquote_plus(raw_name)
        if equals and value and is_secret_name(name):
            names[name] = None
            piece = f"{raw_name}={REDACTED}"
        pieces.append(piece)
    return "&".join(pieces)
