"""A light load generator: keep-alive HTTP/1.1 over TLS with h11 on asyncio streams. httpx costs
several milliseconds of CPU per request, which on a 2-core machine is taken from the servers
being measured; this costs a fraction of that."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import h11


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, base_url: str, context: ssl.SSLContext | None) -> Connection:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(
            parts.hostname,
            parts.port,
            ssl=context if parts.scheme == "https" else None,
            server_hostname=parts.hostname if parts.scheme == "https" else None,
        )
        return cls(reader, writer, parts.netloc)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        """(status, headers, body) of one request on this kept-alive connection."""
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        fields = [("Host", self.host), ("Content-Length", str(len(body)))]
        fields += list((headers or {}).items())
        out = self.h11.send(h11.Request(method=method, target=target, headers=fields))
        out += self.h11.send(h11.Data(data=body)) if body else b""
        out += self.h11.send(h11.EndOfMessage())
        self.writer.write(out)
        status, response_headers, chunks = 0, {}, []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.h11.receive_data(data)
                if not data:
                    raise ConnectionError("the server closed the connection")
                continue
            if isinstance(event, h11.Response):
                status, response_headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, response_headers, b"".join(chunks)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
