"""httpcore plumbing for deliveries, where its defaults cost most of a delivery's CPU with dozens
of kept-alive connections to one API (httpcore 1.0.x): a pool whose bookkeeping is linear in its
connections, and streams whose "is_readable" is a poll of their socket."""

from __future__ import annotations

import ssl

import httpcore
from httpcore._utils import is_socket_readable


class LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, assigning requests as upstream does, but counting idle connections once
    per assignment (upstream counts every connection once per idle connection: quadratic)."""

    def _assign_requests_to_connections(self) -> list:
        closing = []
        idle = sum(1 for connection in self._connections if connection.is_idle())
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif connection.has_expired():
                self._connections.remove(connection)
                closing.append(connection)
            elif connection.is_idle() and idle > self._max_keepalive_connections:
                self._connections.remove(connection)
                closing.append(connection)
                idle -= 1
        for pool_request in [request for request in self._requests if request.is_queued()]:
            origin = pool_request.request.url.origin
            available = next(
                (c for c in self._connections if c.can_handle_request(origin) and c.is_available()),
                None,
            )
            if available is None and len(self._connections) >= self._max_connections:
                spare = next((c for c in self._connections if c.is_idle()), None)
                if spare is None:
                    continue  # stays queued until a connection frees up
                self._connections.remove(spare)
                closing.append(spare)
            if available is None:
                available = self.create_connection(origin)
                self._connections.append(available)
            pool_request.assign_to_connection(available)
        return closing


class QuickStream(httpcore.AsyncNetworkStream):
    """A stream whose "is_readable" costs a poll of its socket: httpcore asks it of every pooled
    connection on every request, and anyio's answer rebuilds its attribute tables each time (with
    dozens of pooled connections, the most expensive thing a delivery did)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        return QuickStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        if info == "is_readable" and self._socket is not None:
            return is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)
