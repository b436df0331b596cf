"""A real third-party API for the runner's tests: records every request, answers as scripted.

One tiny ASGI app served by uvicorn over HTTPS (a throwaway CA made here with ``cryptography``;
the server certificate names localhost, 127.0.0.1 and ::1) and over plain HTTP, both on
127.0.0.1 on ephemeral ports, in one background thread with its own event loop. It therefore
serves sync tests, async tests (the test's loop is never blocked by it) and e2e tests where the
runner is another process.

    with Receiver(tmp_path) as r:
        r.respond(503, times=2)                 # then the default: 200 {"ok": true}
        ... deliver to r.https_url("/leads") with ca_file=r.ca_file ...
        [request] = r.wait_for(1)
        assert request.json() == {...}

Replies come from the queue filled by ``respond`` first, then from the ``respond_with``
callable, then the default. ``tls_server_names`` lists the SNI of every TLS handshake.
uvicorn's logging configuration is left alone (``log_config=None``): nothing global changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HeadersIn = Mapping[str, str] | Iterable[tuple[str, str]] | None
Body = bytes | str | dict | list
Reply = tuple[int, HeadersIn, Body]
DEFAULT_REPLY: Reply = (200, None, {"ok": True})


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it."""

    method: str
    path: str
    query: str  # the raw query string, without "?"
    headers: httpx.Headers  # case-insensitive, repeated names kept
    body: bytes
    client_host: str
    client_port: int
    scheme: str  # "https" or "http"

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode()


@dataclass
class _Scripted:
    status: int
    headers: HeadersIn
    body: Body
    times: int
    delay: float


class Receiver:
    def __init__(self, directory: Path, *, keep_alive_seconds: float = 5.0) -> None:
        """`keep_alive_seconds`: how long an idle connection stays open (then the server closes
        it, as real APIs do)."""
        self.directory = Path(directory)
        self._keep_alive = keep_alive_seconds
        self.ca_file = self.directory / "receiver-ca.pem"
        self._cert_file = self.directory / "receiver-cert.pem"
        self._key_file = self.directory / "receiver-key.pem"
        self._cond = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._script: deque[_Scripted] = deque()
        self._responder: Callable[[ReceivedRequest], Reply] | None = None
        self._responder_delay = 0.0
        self._server_names: list[str | None] = []
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._ports: dict[str, int] = {}

    # --- lifecycle ---

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("Receiver already started")
        _write_certificates(self.ca_file, self._cert_file, self._key_file)
        sockets = {scheme: _listening_socket() for scheme in ("https", "http")}
        self._ports = {scheme: sock.getsockname()[1] for scheme, sock in sockets.items()}
        self._servers = [uvicorn.Server(self._config(tls=True)), uvicorn.Server(self._config())]
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(list(sockets.values())),), daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not all(server.started for server in self._servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the receiver did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._servers = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, sockets: list[socket.socket]) -> None:
        await asyncio.gather(
            *(
                server.serve(sockets=[sock])
                for server, sock in zip(self._servers, sockets, strict=True)
            )
        )

    def _config(self, *, tls: bool = False) -> uvicorn.Config:
        options: dict[str, Any] = {}
        if tls:
            options = {
                "ssl_certfile": str(self._cert_file),
                "ssl_keyfile": str(self._key_file),
                "ssl_context_factory": self._tls_context,
            }
        return uvicorn.Config(
            self._app,
            log_config=None,
            log_level="warning",
            access_log=False,
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,  # client_host is the real peer, whatever X-Forwarded-For says
            http="h11",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=self._keep_alive,
            **options,
        )

    def _tls_context(self, config: uvicorn.Config, default: Callable[[], Any]) -> Any:
        context = default()
        context.sni_callback = self._on_sni
        return context

    def _on_sni(self, ssl_object: object, server_name: str | None, context: object) -> None:
        with self._cond:
            self._server_names.append(server_name)

    # --- addresses ---

    def https_url(self, path: str = "/", *, host: str = "127.0.0.1") -> str:
        return f"https://{_netloc(host)}:{self._port('https')}{path}"

    def http_url(self, path: str = "/", *, host: str = "127.0.0.1") -> str:
        return f"http://{_netloc(host)}:{self._port('http')}{path}"

    def _port(self, scheme: str) -> int:
        if scheme not in self._ports:
            raise RuntimeError("Receiver not started")
        return self._ports[scheme]

    # --- what arrived ---

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Snapshot of every request so far, in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def tls_server_names(self) -> list[str | None]:
        """The SNI sent in each TLS handshake (None: the client sent none, e.g. for an IP)."""
        with self._cond:
            return list(self._server_names)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Block until at least ``count`` requests arrived; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(f"{len(self._requests)} of {count} requests in {timeout}s")
            return list(self._requests)

    async def wait_for_async(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - mirrors wait_for
    ) -> list[ReceivedRequest]:
        """Like wait_for, without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while len(arrived := self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(arrived)} of {count} requests in {timeout}s")
            await asyncio.sleep(0.01)
        return arrived

    # --- scripting ---

    def respond(
        self,
        status: int,
        headers: HeadersIn = None,
        body: Body = b"",
        *,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        """Queue ``times`` identical replies (dict/list bodies are sent as JSON)."""
        with self._cond:
            self._script.append(_Scripted(status, headers, body, times, delay))

    def respond_with(
        self, responder: Callable[[ReceivedRequest], Reply] | None, *, delay: float = 0.0
    ) -> None:
        """Answer every unscripted request with ``responder(request) -> (status, headers,
        body)``; None restores the default reply."""
        with self._cond:
            self._responder, self._responder_delay = responder, delay

    def reset(self) -> None:
        """Forget requests, queued replies and the responder."""
        with self._cond:
            self._requests.clear()
            self._server_names.clear()
            self._script.clear()
            self._responder, self._responder_delay = None, 0.0

    def _reply_for(self, request: ReceivedRequest) -> tuple[Reply, float]:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
            if self._script:
                scripted = self._script[0]
                scripted.times -= 1
                if scripted.times <= 0:
                    self._script.popleft()
                return (scripted.status, scripted.headers, scripted.body), scripted.delay
            responder, delay = self._responder, self._responder_delay
        if responder is None:
            return DEFAULT_REPLY, 0.0
        return responder(request), delay

    # --- the app ---

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        client = scope.get("client") or ("", 0)
        request = ReceivedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=httpx.Headers(list(scope["headers"])),
            body=bytes(body),
            client_host=client[0],
            client_port=client[1],
            scheme=scope["scheme"],
        )
        try:
            (status, headers, payload), delay = self._reply_for(request)
        except Exception as error:  # a broken responder is a test bug: make it visible
            status, headers, payload, delay = 500, None, f"responder failed: {error!r}", 0.0
        if delay:
            await asyncio.sleep(delay)
        raw_headers, raw_body = _encode(headers, payload)
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": raw_body})


def _encode(headers: HeadersIn, body: Body) -> tuple[list[tuple[bytes, bytes]], bytes]:
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers or [])
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("content-type", "application/json"))
    elif isinstance(body, str):
        body = body.encode()
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs], body


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- a throwaway CA and a server certificate for localhost, 127.0.0.1 and ::1 ---


def _write_certificates(ca_file: Path, cert_file: Path, key_file: Path) -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leadmesh test receiver CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
            ca_name,
            key.public_key(),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
