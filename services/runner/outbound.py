"""The outgoing HTTP client of deliveries: the guarded pool, TLS, redirects and capped reads.

Every connection it opens goes through ``guard.GuardedBackend`` (the address rules live in
``guard.py``); ``send`` follows redirects within the same origin only and reads a response
through ``inflate.Inflater`` in bounded steps.

This module must never follow a redirect to another origin, never decode or keep more than
``MAX_BODY`` (+ one network read) of a response, and never put a URL's path or query (which may
hold an API key) into an error message.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import certifi
import httpcore
import httpx

from services.runner.guard import DestinationRefused, EgressPolicy, GuardedBackend, check_url
from services.runner.inflate import Inflater
from services.runner.pool import LinearPool
from services.runner.tracing import http_call, record_status

MAX_BODY = 64 * 1024  # bytes of a response kept
REDIRECTS = frozenset({301, 302, 303, 307, 308})
LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=5.0)
_BODY_HEADERS = ("content-type", "content-length", "transfer-encoding", "content-encoding")


@dataclass(frozen=True)
class Sent:
    """A response whose body was read (at most MAX_BODY bytes kept) and whose stream is closed."""

    response: httpx.Response  # status and headers; its stream is closed, use ``body``
    body: bytes
    truncated: bool


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """System CAs + certifi's (+ ``ca_file``); hostname always verified; TLS 1.2 at least."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass
class Outbound:
    """The one connection pool every delivery goes through (httpx's transport over httpcore's
    pool, on the guarded backend) and its timeouts.

    Deliveries use the transport directly rather than an `httpx.AsyncClient`: `send` does its
    own redirects, a client's cookie jar is a hazard here (one user's API must never plant a
    cookie on another user's delivery; with no jar at all there is nothing to plant), and the
    client's merging, auth and cookie steps cost a fifth of a delivery's HTTP time."""

    transport: httpx.AsyncHTTPTransport
    timeouts: dict[str, float]

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def make_client(
    policy: EgressPolicy,
    *,
    connect_timeout: float,
    read_timeout: float,
    ca_file: str | None = None,
) -> Outbound:
    """Outgoing HTTP whose every connection goes through GuardedBackend (HTTP/1.1 only)."""
    # httpx logs each request's full URL at INFO, and a query string may carry an API key.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = tls_context(ca_file)
    transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False, limits=LIMITS)
    # httpx offers no network_backend parameter: swap in a pool built like its own, plus ours.
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps an httpcore pool in _pool")
    transport._pool = LinearPool(
        ssl_context=context,
        max_connections=LIMITS.max_connections,
        max_keepalive_connections=LIMITS.max_keepalive_connections,
        keepalive_expiry=LIMITS.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=GuardedBackend(policy),
    )
    timeouts = {
        "connect": connect_timeout,
        "read": read_timeout,
        "write": read_timeout,
        "pool": connect_timeout,
    }
    return Outbound(transport, timeouts)


# Sent unless the connection's own headers say otherwise.
DEFAULT_HEADERS = {"user-agent": "leadmesh-runner", "accept": "*/*"}


async def send(
    client: Outbound,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None,
    policy: EgressPolicy,
    max_redirects: int = 5,
) -> Sent:
    """Send one delivery, following redirects within the same origin only.

    Raises DestinationRefused (unchanged: httpx and httpcore let it through) and httpx's own
    errors (``httpx.TimeoutException``, ``httpx.ConnectError``, ``httpx.RemoteProtocolError``…).
    A 301/302 keeps the method and body like 307/308: turning a lead's POST into a body-less GET
    would report success for a lead that never arrived. Only 303 switches to GET.
    """
    check_url(url, policy)
    target = httpx.URL(url)
    given = {name.lower() for name in headers}
    raw_headers = {name: value.encode() for name, value in headers.items()}  # UTF-8, not ASCII
    raw_headers.update({k: v.encode() for k, v in DEFAULT_HEADERS.items() if k not in given})
    extensions = {"timeout": client.timeouts}
    for _ in range(max_redirects + 1):
        request = httpx.Request(
            method, target, headers=raw_headers, content=content, extensions=extensions
        )
        with http_call(method, target) as span:
            response = await client.transport.handle_async_request(request)
            record_status(span, response.status_code)
            try:
                location = response.headers.get("location")
                if response.status_code not in REDIRECTS or not location:
                    body, truncated = await _read_capped(response)
                    return Sent(response, body, truncated)
            finally:
                await response.aclose()
        target = _redirect_target(target, location, policy)
        if response.status_code == 303 and method != "HEAD":
            method, content = "GET", None
            raw_headers = {k: v for k, v in raw_headers.items() if k.lower() not in _BODY_HEADERS}
    raise DestinationRefused(
        "TOO_MANY_REDIRECTS", f"{target.host} redirected more than {max_redirects} times"
    )


def _redirect_target(current: httpx.URL, location: str, policy: EgressPolicy) -> httpx.URL:
    try:
        target = current.join(location)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise DestinationRefused(
            "REDIRECT_REFUSED", f"{current.host} redirected to an invalid URL"
        ) from None
    if _origin(target) != _origin(current):
        scheme, host, port = _origin(target)
        raise DestinationRefused(
            "REDIRECT_REFUSED",
            f"{current.host} redirected to {scheme}://{host}:{port}, another origin",
        )
    check_url(str(target), policy)
    return target


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """At most MAX_BODY bytes of the decoded body. The raw stream is decoded here, in bounded
    steps (``Inflater``): httpx's decoders would inflate a whole network read of a gzip bomb
    before the cap could apply."""
    inflater = Inflater(response.headers.get_list("content-encoding", split_commas=True))
    chunks: list[bytes] = []
    size = 0
    ignored = 0  # raw bytes after the end of the compressed stream
    async with contextlib.aclosing(response.aiter_raw()) as stream:
        async for raw in stream:
            if inflater.finished:
                ignored += len(raw)
                if ignored > MAX_BODY:
                    break
                continue  # read on to the end of the message, so the connection is reused
            chunk = inflater.decode(raw, MAX_BODY + 1 - size)
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY:
                break
    body = b"".join(chunks)
    return body[:MAX_BODY], len(body) > MAX_BODY
