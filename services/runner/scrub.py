"""A resolved credential's secret out of error text, in every form an exception may quote it.

Errors become `runs.error`, attempt errors, notifications and their e-mail. Libraries quote what
they refuse in their own way: h11 a header value as a bytes repr (`Illegal header value
b'sk_live_…\\n'`), others a `repr`, a URL percent-encoded, a JSON string escaped; and a secret
with a newline in it may be quoted one line at a time. Every such form of every secret string of
the credential is replaced with `[redacted]` before an outcome leaves the worker. Values shorter
than four characters are left alone: they would redact ordinary words.

`scrub_outcome` returns a copy of an outcome with this applied to everything it records and
each error fitted to its column with the attempt count kept. This module must never return text
that still holds one of the forms it was given.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from urllib.parse import quote, quote_plus

from services.runner.model import Outcome
from services.runner.recorder import ERROR_CHARS

REDACTED = "[redacted]"
_SHORTEST = 4
# Fields that name where a secret goes, not the secret itself.
_NOT_SECRET = frozenset({"header", "query", "token_type", "scopes", "expires_at"})


def secret_forms(
    credential: tuple[str, dict] | None, also: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Every form of the credential's secrets an error may hold (with the forms `also`: a
    refreshed token's predecessor), longest first, so a longer form is replaced before a part
    of it would be."""
    if credential is None:
        return also
    kind, secret = credential
    values = [v for k, v in secret.items() if k not in _NOT_SECRET and isinstance(v, str)]
    if kind == "login":
        pair = f"{secret.get('username', '')}:{secret.get('password', '')}"
        values += [pair, base64.b64encode(pair.encode()).decode("ascii")]
    forms: set[str] = set(also)
    for value in values:
        forms.update(_forms(value))
    return tuple(sorted((f for f in forms if len(f) >= _SHORTEST), key=len, reverse=True))


def _forms(value: str) -> list[str]:
    text_repr = repr(value)
    bytes_repr = repr(value.encode("utf-8", "surrogatepass"))
    lines = value.splitlines()
    return [
        value,
        text_repr,
        text_repr[1:-1],
        bytes_repr,
        bytes_repr[2:-1],
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        json.dumps(value)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
        *lines,
        *(line.strip() for line in lines),
    ]


def scrub(text: str | None, forms: tuple[str, ...]) -> str | None:
    if not text or not forms:
        return text
    for form in forms:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


_AFTER_AT_END = re.compile(r" \(after \d+ attempts\)\Z")


def scrub_outcome(outcome: Outcome, secrets: tuple[str, ...]) -> Outcome:
    """The outcome with no secret in anything it records, and errors that fit their column
    with the attempt count kept (cut before it, not through it)."""
    run = outcome.run
    if run.error is not None:
        run = replace(run, error=_fit(scrub(run.error, secrets)))
    return replace(
        outcome,
        run=run,
        attempts=tuple(
            a if a.error is None else replace(a, error=_fit(scrub(a.error, secrets)))
            for a in outcome.attempts
        ),
        notices=tuple(replace(n, message=scrub(n.message, secrets) or "") for n in outcome.notices),
    )


def _fit(text: str) -> str:
    if len(text) <= ERROR_CHARS:
        return text
    found = _AFTER_AT_END.search(text)
    suffix = found.group(0) if found else ""
    return text[: ERROR_CHARS - len(suffix) - 1] + "…" + suffix
