"""The test receiver against plain httpx clients, from sync and async tests."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.receiver import ReceivedRequest, Receiver


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with Receiver(tmp_path_factory.mktemp("receiver")) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(receiver: Receiver) -> None:
    receiver.reset()


def trusting(receiver: Receiver) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(receiver.ca_file))


def test_records_requests_over_https_and_http(receiver: Receiver) -> None:
    verify = trusting(receiver)
    reply = httpx.post(receiver.https_url("/leads?src=a"), json={"a": 1}, verify=verify)
    assert (reply.status_code, reply.json()) == (200, {"ok": True})
    httpx.get(receiver.http_url("/plain"), headers={"X-Key": "v"})

    first, second = receiver.wait_for(2)
    assert (first.method, first.path, first.query, first.scheme) == (
        "POST",
        "/leads",
        "src=a",
        "https",
    )
    assert first.json() == {"a": 1}
    assert first.headers["Content-Type"] == "application/json"
    assert first.client_host == "127.0.0.1"
    assert (second.scheme, second.headers["x-key"], second.body) == ("http", "v", b"")


def test_the_certificate_names_localhost_and_loopback_addresses(receiver: Receiver) -> None:
    verify = trusting(receiver)
    for host in ("localhost", "127.0.0.1"):
        assert httpx.get(receiver.https_url(host=host), verify=verify).status_code == 200
    assert receiver.tls_server_names == ["localhost", None]  # no SNI for an IP address
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(receiver.https_url())  # certifi's CAs do not know the throwaway CA


def test_scripted_replies_then_the_default(receiver: Receiver) -> None:
    receiver.respond(503, {"Retry-After": "1"}, "busy", times=2)
    receiver.respond(201, body={"id": 7})
    replies = [httpx.get(receiver.http_url()) for _ in range(4)]
    assert [r.status_code for r in replies] == [503, 503, 201, 200]
    assert replies[0].headers["retry-after"] == "1"
    assert replies[0].text == "busy"
    assert replies[2].json() == {"id": 7}


def test_dynamic_replies_and_delay(receiver: Receiver) -> None:
    def echo(request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
        return 202, {"X-Path": request.path}, request.body[::-1]

    receiver.respond_with(echo, delay=0.2)
    started = time.monotonic()
    reply = httpx.post(receiver.http_url("/echo"), content=b"abc")
    assert time.monotonic() - started >= 0.2
    assert (reply.status_code, reply.headers["x-path"], reply.content) == (202, "/echo", b"cba")
    receiver.respond_with(None)
    assert httpx.get(receiver.http_url()).json() == {"ok": True}


def test_wait_for_times_out(receiver: Receiver) -> None:
    with pytest.raises(TimeoutError, match="0 of 1"):
        receiver.wait_for(1, timeout=0.05)


async def test_async_tests_are_not_blocked(receiver: Receiver) -> None:
    async with httpx.AsyncClient(verify=trusting(receiver)) as client:
        reply = await client.put(receiver.https_url("/x"), content=b"body")
    assert reply.status_code == 200
    [request] = await receiver.wait_for_async(1, timeout=2)
    assert (request.method, request.body) == ("PUT", b"body")
    with pytest.raises(TimeoutError):
        await receiver.wait_for_async(2, timeout=0.05)


def test_urls_need_a_started_receiver(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        Receiver(tmp_path).https_url()
