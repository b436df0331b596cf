"""The SSRF guard: which addresses a delivery may reach, and the check of the one connected to.

A destination is checked twice: ``check_url`` when it is saved (scheme, credentials, IP
literals) and ``GuardedBackend.connect_tcp`` for every new connection, which resolves the name
itself and connects only to an address it has just checked — so DNS rebinding cannot slip a
private address in between. TLS still verifies the URL's hostname: httpcore passes the origin's
host as ``server_hostname`` to ``start_tls``, whatever address ``connect_tcp`` connected to.
The outgoing client built on this backend (redirects, capped reads, TLS) is ``outbound.py``.

This module must never connect to a refused address, and never put a URL's path or query
(which may hold an API key) into an error message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

from services.runner.pool import connect_asyncio

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Ranges Python's ipaddress calls global although no public host lives there: site-local
# (RFC 3879 deprecated it, routers may still route it inside a site) and the documentation
# prefix of RFC 9637 (newer than the interpreter's tables).
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_DOCUMENTATION = ipaddress.ip_network("3fff::/20")
_UNRESOLVABLE = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


@dataclass(frozen=True)
class EgressPolicy:
    """Where deliveries may go. ``allowed_networks`` lifts the address rules (tests: loopback)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allow_plain_http: bool = False
    source_address: str | None = None  # bind outgoing connections to this local address

    def __post_init__(self) -> None:
        networks = tuple(ipaddress.ip_network(n) for n in self.allowed_networks)
        object.__setattr__(self, "allowed_networks", networks)
        if self.source_address is not None:
            ipaddress.ip_address(self.source_address)  # ValueError if not an IP literal


class DestinationRefused(Exception):
    """A destination the guard will not talk to. ``reason`` is a stable UPPER_SNAKE code:
    INVALID_URL, PLAIN_HTTP_REFUSED, ADDRESS_REFUSED, UNRESOLVABLE, REDIRECT_REFUSED,
    TOO_MANY_REDIRECTS. The message names the host, never the path or query."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- the address rules ---


def refused_kind(ip: IPAddress, policy: EgressPolicy) -> str | None:
    """Why ``ip`` is refused ("private", "loopback", …), or None when it may be contacted."""
    if any(ip in net for net in policy.allowed_networks if net.version == ip.version):
        return None
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return refused_kind(embedded, policy)
    if ip in _METADATA:
        return "cloud metadata"
    for kind, refused in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared (carrier-grade NAT)", ip in _SHARED),
        ("site-local", ip in _SITE_LOCAL),
        ("documentation", ip in _DOCUMENTATION),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    ):
        if refused:
            return kind
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped (::ffff:a.b.c.d), 6to4, NAT64."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None or ip.sixtofour is not None:
        return ip.ipv4_mapped or ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _a(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"


# --- save-time validation ---


def check_url(url: str, policy: EgressPolicy) -> None:
    """Refuse a URL that can never be a delivery destination (raises DestinationRefused)."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decodes IDNA: a malformed label ("xn--") is a ValueError here
    except (httpx.InvalidURL, TypeError, ValueError):
        raise DestinationRefused("INVALID_URL", "not a valid URL") from None
    if parsed.scheme not in ("https", "http"):
        raise DestinationRefused("INVALID_URL", "the URL must start with https://")
    if not host:
        raise DestinationRefused("INVALID_URL", "the URL has no host")
    if parsed.scheme == "http" and not policy.allow_plain_http:
        raise DestinationRefused("PLAIN_HTTP_REFUSED", f"{host}: plain http is refused, use https")
    if parsed.userinfo:
        raise DestinationRefused(
            "INVALID_URL", f"{host}: credentials in the URL are refused, send them in headers"
        )
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise DestinationRefused("INVALID_URL", f"{host}: port {parsed.port} is out of range")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked when connecting
    kind = refused_kind(ip, policy)
    if kind is not None:
        raise DestinationRefused("ADDRESS_REFUSED", f"{host} is {_a(kind)}")


# --- connect-time enforcement ---


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves, checks, then connects to the checked IP."""

    def __init__(self, policy: EgressPolicy) -> None:
        self._policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        candidates = self._permitted(host, await _resolve(host, port, timeout))
        source = self._policy.source_address or local_address
        if source is not None:
            version = ipaddress.ip_address(source).version
            candidates = [ip for ip in candidates if ip.version == version]
            if not candidates:
                raise httpcore.ConnectError(f"{host} has no IPv{version} address for {source}")
        error: Exception | None = None
        for ip in candidates:  # in resolver order; the next one only if connecting fails
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                return await connect_asyncio(str(ip), port, left, source, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = failed
        assert error is not None
        raise error

    def _permitted(self, host: str, addresses: list[IPAddress]) -> list[IPAddress]:
        permitted = [ip for ip in addresses if refused_kind(ip, self._policy) is None]
        if not permitted:
            ip = addresses[0]
            kind = refused_kind(ip, self._policy) or "refused"
            where = f"{host} is" if host == str(ip) else f"{host} resolves to {ip},"
            raise DestinationRefused("ADDRESS_REFUSED", f"{where} {_a(kind)}")
        return permitted

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("ADDRESS_REFUSED", "unix sockets are refused")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _resolve(host: str, port: int, seconds: float | None) -> list[IPAddress]:
    """Every address of ``host`` (an IP literal resolves to itself), resolver order, no repeats."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
    except socket.gaierror as error:
        if error.errno in _UNRESOLVABLE:
            raise DestinationRefused("UNRESOLVABLE", f"{host} does not resolve") from None
        raise httpcore.ConnectError(f"resolving {host} failed: {error.strerror}") from None
    addresses: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        addresses[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    if not addresses:
        raise DestinationRefused("UNRESOLVABLE", f"{host} does not resolve")
    return list(addresses)
