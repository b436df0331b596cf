"""httpcore plumbing for deliveries, where its defaults cost most of a delivery's CPU with dozens
of kept-alive connections to one API (httpcore 1.0.x): a pool whose bookkeeping is linear in its
connections, and connections on asyncio's own streams."""

from __future__ import annotations

import asyncio
import contextlib
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


class AsyncioStream(httpcore.AsyncNetworkStream):
    """A connection on asyncio's own streams and TLS. httpcore's default (anyio) costs a cancel
    scope and an exception map per read and per write, and runs TLS through a second layer of
    Python; here a read or a write is one await under `asyncio.timeout`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("reading the response timed out") from None
        except (OSError, ssl.SSLError) as error:
            raise httpcore.ReadError(str(error) or type(error).__name__) from error

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout("sending the request timed out") from None
        except (OSError, ssl.SSLError) as error:
            raise httpcore.WriteError(str(error) or type(error).__name__) from error

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
    ) -> httpcore.AsyncNetworkStream:
        try:
            await self._writer.start_tls(
                ssl_context, server_hostname=server_hostname, ssl_handshake_timeout=timeout
            )
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout("the TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as error:
            await self.aclose()
            raise httpcore.ConnectError(str(error)) from error
        return self

    def get_extra_info(self, info: str):
        if info == "is_readable":
            # An idle kept-alive connection that has anything to read (the server's close,
            # as a rule) must not be reused. asyncio's transport reads eagerly, so what arrived
            # is in the reader already; what has not been read by the transport is on the socket.
            transport = self._writer.transport
            if self._reader.at_eof() or transport.is_closing():
                return True
            socket = transport.get_extra_info("socket")
            return socket is not None and is_socket_readable(socket)
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._writer.get_extra_info(names.get(info, info))


async def connect_asyncio(
    ip: str, port: int, seconds: float | None, local_address: str | None, socket_options
) -> AsyncioStream:
    """A TCP connection to `ip` (an address, never a name: the guard has resolved and checked
    it), from `local_address` when given."""
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(
                ip, port, local_addr=(local_address, 0) if local_address else None
            )
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"connecting to {ip} timed out") from None
    except OSError as error:
        raise httpcore.ConnectError(str(error)) from error
    sock = writer.get_extra_info("socket")
    for option in socket_options or ():
        sock.setsockopt(*option)
    return AsyncioStream(reader, writer)
