"""One delivery: the connection's action rendered over the event, authenticated with the resolved
credential, as it goes on the wire; and what of it may be recorded (credentials redacted)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from services.runner.expressions import Budget
from services.runner.model import Connection
from services.runner.template import (
    MAX_RENDER_BYTES,
    HeaderTemplate,
    Template,
    compile_headers,
    compile_template,
)

REDACTED = "[redacted]"
MAX_RECORDED_BODY = 64 * 1024


@dataclass(frozen=True)
class Compiled:
    headers: HeaderTemplate
    body: Template
    has_body: bool


class Templates:
    """Each connection's templates compiled once per version of the connection."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, Any], Compiled] = {}

    def of(self, connection: Connection) -> Compiled:
        key = (connection.id, connection.update_time)
        found = self._cache.get(key)
        if found is None:
            action = connection.action
            if len(self._cache) > 10_000:
                self._cache.clear()
            found = self._cache[key] = Compiled(
                compile_headers(action.get("headers") or {}),
                compile_template(action.get("body_template")),
                action.get("body_template") is not None,
            )
        return found


@dataclass
class Prepared:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None
    # The same request with credentials redacted, for execution details.
    recorded: dict[str, Any]


def prepare(
    action: dict[str, Any],
    compiled: Compiled,
    event: dict[str, Any],
    run_id: str,
    credential: tuple[str, dict[str, Any]] | None,
    budget: Budget | None = None,
) -> Prepared:
    """RenderError (RenderTooLarge past the budget's bytes); LargeRender when an inline budget
    runs out (``services.runner.rendering`` then starts again on a thread)."""
    budget = budget or Budget(MAX_RENDER_BYTES)
    method = action["method"]
    url = action["url"]
    headers = compiled.headers.render(event, budget)
    secret_headers: set[str] = set()
    secret_params: set[str] = set()
    content = None
    if compiled.has_body and method != "GET":
        content = compiled.body.encode(event, budget)
        if not any(h.lower() == "content-type" for h in headers):
            headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = run_id
    if credential is not None:
        kind, secret = credential
        if kind == "oauth2":
            headers["Authorization"] = f"Bearer {secret.get('access_token', '')}"
            secret_headers.add("authorization")
        elif kind == "login":
            pair = f"{secret.get('username', '')}:{secret.get('password', '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            secret_headers.add("authorization")
        elif kind == "api_key":
            if secret.get("query"):
                url = _with_param(url, str(secret["query"]), str(secret.get("key", "")))
                secret_params.add(str(secret["query"]))
            else:
                name = str(secret.get("header") or "X-Api-Key")
                headers[name] = str(secret.get("key", ""))
                secret_headers.add(name.lower())
    recorded = {
        "method": method,
        "url": _redact_params(url, secret_params),
        "headers": {
            k: (REDACTED if k.lower() in secret_headers else v) for k, v in headers.items()
        },
        "body": _recorded_body(content),
    }
    return Prepared(method, url, headers, content, recorded)


def _with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), (name, value)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redact_params(url: str, names: set[str]) -> str:
    if not names:
        return url
    parts = urlsplit(url)
    query = [
        (k, REDACTED if k in names else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    readable = urlencode(query).replace("%5Bredacted%5D", REDACTED)
    return urlunsplit(parts._replace(query=readable))


def _recorded_body(content: bytes | None) -> str | None:
    if content is None:
        return None
    return content[:MAX_RECORDED_BODY].decode("utf-8", errors="replace")


def body_text(body: bytes) -> tuple[str, str]:
    """(text, encoding) of a response body: utf-8 text, else base64. A body holding NUL is
    base64 too: PostgreSQL's text columns cannot store NUL, and one such body must never fail
    the batch of outcomes it is written with."""
    if b"\x00" not in body:
        try:
            return body.decode("utf-8"), "text"
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), "base64"


_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts "²"


def retry_after_seconds(value: str | None, now_epoch: float) -> float | None:
    """Retry-After (RFC 9110 §10.2.3) as delay-seconds or an HTTP-date; None when absent or
    anything else, which is ignored rather than trusted."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; "-0000" parses naive
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, when.timestamp() - now_epoch)
    except (OverflowError, ValueError):
        return None
