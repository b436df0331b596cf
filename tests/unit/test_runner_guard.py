"""The SSRF guard over real sockets: refusals, connect-time checks, binding, redirects, TLS."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.runner.guard import (
    DestinationRefused,
    EgressPolicy,
    GuardedBackend,
    check_url,
    refused_kind,
)
from services.runner.outbound import MAX_BODY, Outbound, make_client, send
from tests.support.receiver import Receiver

STRICT = EgressPolicy()  # production: https only, public addresses only
PLAIN = EgressPolicy(allow_plain_http=True)
LOOPBACK = EgressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
LOOPBACK_PLAIN = EgressPolicy(allowed_networks=LOOPBACK.allowed_networks, allow_plain_http=True)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with Receiver(tmp_path_factory.mktemp("receiver")) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(receiver: Receiver) -> None:
    receiver.reset()


def client_for(policy: EgressPolicy, receiver: Receiver | None = None) -> Outbound:
    ca_file = str(receiver.ca_file) if receiver else None
    return make_client(policy, connect_timeout=5, read_timeout=5, ca_file=ca_file)


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[Outbound]:
    async with client_for(LOOPBACK_PLAIN, receiver) as running:
        yield running


async def post(client: Outbound, url: str, policy: EgressPolicy = LOOPBACK_PLAIN):
    return await send(
        client, "POST", url, headers={"Content-Type": "text/plain"}, content=b"lead", policy=policy
    )


# --- the address rules ---


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("fec0::1", "site-local"),  # deprecated (RFC 3879); Python calls it global
        ("feff:ffff::1", "site-local"),
        ("3fff::1", "documentation"),  # RFC 9637; Python calls it global
        ("3fff:fff:ffff::1", "documentation"),
        ("3fff:1000::1", None),  # just past the /20
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_refused_kinds(address: str, kind: str | None) -> None:
    assert refused_kind(ipaddress.ip_address(address), STRICT) == kind


def test_allowed_networks_lift_the_rules_for_their_addresses_only() -> None:
    assert refused_kind(ipaddress.ip_address("127.0.0.9"), LOOPBACK) is None
    assert refused_kind(ipaddress.ip_address("::ffff:127.0.0.9"), LOOPBACK) is None
    assert refused_kind(ipaddress.ip_address("::1"), LOOPBACK) == "loopback"
    assert refused_kind(ipaddress.ip_address("10.0.0.1"), LOOPBACK) == "private"


# --- save-time checks ---


@pytest.mark.parametrize(
    ("url", "policy", "reason", "words"),
    [
        ("http://10.0.0.1/leads", PLAIN, "ADDRESS_REFUSED", "10.0.0.1 is a private address"),
        ("http://10.0.0.1/leads", STRICT, "PLAIN_HTTP_REFUSED", "10.0.0.1: plain http"),
        (
            "https://169.254.169.254/latest/meta-data?api_key=s3cret",
            STRICT,
            "ADDRESS_REFUSED",
            "a cloud metadata address",
        ),
        ("http://[::1]/", PLAIN, "ADDRESS_REFUSED", "::1 is a loopback address"),
        ("https://[::ffff:127.0.0.1]/", STRICT, "ADDRESS_REFUSED", "a loopback address"),
        ("https://[fec0::7]/", STRICT, "ADDRESS_REFUSED", "fec0::7 is a site-local address"),
        ("https://[3fff::7]/", STRICT, "ADDRESS_REFUSED", "3fff::7 is a documentation address"),
        ("https://user:s3cret@api.example/", STRICT, "INVALID_URL", "credentials"),
        ("ftp://api.example/", STRICT, "INVALID_URL", "https://"),
        ("https:///path", STRICT, "INVALID_URL", "no host"),
        ("https://api.example:0/", STRICT, "INVALID_URL", "port 0"),
        ("https://api.example:99999/", STRICT, "INVALID_URL", "port 99999"),
        ("https://api.example:x/?token=s3cret", STRICT, "INVALID_URL", "not a valid URL"),
    ],
)
def test_check_url_refuses(url: str, policy: EgressPolicy, reason: str, words: str) -> None:
    with pytest.raises(DestinationRefused) as caught:
        check_url(url, policy)
    assert caught.value.reason == reason
    assert words in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_check_url_accepts_names_and_public_addresses() -> None:
    check_url("https://api.example/v1/leads?key=1", STRICT)
    check_url("https://8.8.8.8:8443/", STRICT)
    check_url("http://127.0.0.1:8080/", LOOPBACK_PLAIN)


# --- connect-time checks (the name is resolved by the guard itself) ---


async def test_a_name_resolving_to_loopback_is_refused_when_connecting(
    receiver: Receiver,
) -> None:
    url = receiver.https_url("/leads?api_key=s3cret", host="localhost")
    check_url(url, STRICT)  # a name passes at save time...
    async with client_for(STRICT, receiver) as client:
        with pytest.raises(DestinationRefused) as caught:
            await post(client, url, STRICT)  # ...and is refused at connect time
        assert caught.value.reason == "ADDRESS_REFUSED"
        assert "localhost resolves to 127.0.0.1, a loopback address" in str(caught.value)
        assert "s3cret" not in str(caught.value)
        # httpx and httpcore let the guard's exception through unchanged, even without send()
        with pytest.raises(DestinationRefused):
            await client.transport.handle_async_request(httpx.Request("GET", url))
    assert receiver.requests == []


@pytest.mark.parametrize("host", ["0x7f000001", "127.1", "2130706433", "0"])
async def test_odd_spellings_of_local_addresses_are_refused_when_connecting(host: str) -> None:
    url = f"https://{host}/?api_key=s3cret"
    check_url(url, STRICT)  # not IP literals to ipaddress, so only the resolver knows
    async with client_for(STRICT) as client:
        with pytest.raises(DestinationRefused) as caught:
            await post(client, url, STRICT)
    assert caught.value.reason == "ADDRESS_REFUSED"
    assert f"{host} resolves to" in str(caught.value)


async def test_an_unresolvable_name_is_refused() -> None:
    async with client_for(STRICT) as client:
        with pytest.raises(DestinationRefused) as caught:
            await post(client, "https://no-such-host.invalid/", STRICT)
    assert caught.value.reason == "UNRESOLVABLE"


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(DestinationRefused):
        await GuardedBackend(STRICT).connect_unix_socket("/var/run/docker.sock")


async def test_allowed_networks_reach_the_receiver(receiver: Receiver, client: Outbound) -> None:
    sent = await post(client, receiver.https_url("/leads?src=x"))
    assert (sent.response.status_code, sent.body, sent.truncated) == (200, b'{"ok": true}', False)
    [request] = receiver.requests
    assert (request.method, request.path, request.query, request.body) == (
        "POST",
        "/leads",
        "src=x",
        b"lead",
    )


async def test_plain_http_only_when_allowed(receiver: Receiver, client: Outbound) -> None:
    with pytest.raises(DestinationRefused) as caught:
        await post(client, receiver.http_url(), LOOPBACK)
    assert caught.value.reason == "PLAIN_HTTP_REFUSED"
    sent = await post(client, receiver.http_url(), LOOPBACK_PLAIN)
    assert sent.response.status_code == 200
    assert [r.scheme for r in receiver.requests] == ["http"]


async def test_connections_are_bound_to_the_source_address(receiver: Receiver) -> None:
    policy = EgressPolicy(allowed_networks=LOOPBACK.allowed_networks, source_address="127.0.0.2")
    async with client_for(policy, receiver) as client:
        await post(client, receiver.https_url(), policy)
    assert receiver.requests[0].client_host == "127.0.0.2"


async def test_keep_alive_connections_are_reused(receiver: Receiver, client: Outbound) -> None:
    for _ in range(3):
        await post(client, receiver.https_url())
    assert len({r.client_port for r in receiver.requests}) == 1


# --- redirects ---


async def test_a_redirect_to_the_same_origin_keeps_method_and_body(
    receiver: Receiver, client: Outbound
) -> None:
    receiver.respond(307, {"Location": "/moved?x=1"})
    receiver.respond(302, {"Location": receiver.https_url("/final")})
    sent = await post(client, receiver.https_url("/start"))
    assert sent.response.status_code == 200
    assert [(r.method, r.path, r.body) for r in receiver.requests] == [
        ("POST", "/start", b"lead"),
        ("POST", "/moved", b"lead"),
        ("POST", "/final", b"lead"),
    ]


async def test_303_turns_into_a_get_without_body(receiver: Receiver, client: Outbound) -> None:
    receiver.respond(303, {"Location": "/status"})
    await post(client, receiver.https_url("/start"))
    final = receiver.requests[-1]
    assert (final.method, final.path, final.body) == ("GET", "/status", b"")
    assert "content-type" not in final.headers


@pytest.mark.parametrize("elsewhere", ["host", "port", "scheme"])
async def test_a_redirect_to_another_origin_is_refused(
    receiver: Receiver, client: Outbound, elsewhere: str
) -> None:
    location = {
        "host": receiver.https_url("/x?token=s3cret", host="localhost"),
        "port": str(httpx.URL(receiver.https_url("/x")).copy_with(port=1)),
        "scheme": receiver.http_url("/x"),
    }[elsewhere]
    receiver.respond(301, {"Location": location})
    with pytest.raises(DestinationRefused) as caught:
        await post(client, receiver.https_url("/start"))
    assert caught.value.reason == "REDIRECT_REFUSED"
    assert "s3cret" not in str(caught.value)
    assert len(receiver.requests) == 1


async def test_redirect_loops_end(receiver: Receiver, client: Outbound) -> None:
    receiver.respond(307, {"Location": "/again"}, times=10)
    with pytest.raises(DestinationRefused) as caught:
        await send(
            client,
            "POST",
            receiver.https_url(),
            headers={},
            content=b"x",
            policy=LOOPBACK,
            max_redirects=2,
        )
    assert caught.value.reason == "TOO_MANY_REDIRECTS"
    assert len(receiver.requests) == 3


# --- response bodies ---


@pytest.mark.parametrize(
    ("size", "truncated"), [(10, False), (MAX_BODY, False), (MAX_BODY + 1, True), (500_000, True)]
)
async def test_response_bodies_are_capped_at_64_kib(
    receiver: Receiver, client: Outbound, size: int, truncated: bool
) -> None:
    receiver.respond(200, body=b"x" * size)
    sent = await post(client, receiver.https_url())
    assert (len(sent.body), sent.truncated) == (min(size, MAX_BODY), truncated)


async def test_the_pool_survives_a_truncated_body(receiver: Receiver, client: Outbound) -> None:
    receiver.respond(200, body=b"x" * 500_000)
    await post(client, receiver.https_url())
    sent = await post(client, receiver.https_url())
    assert sent.body == b'{"ok": true}'


# --- TLS ---


async def test_tls_needs_the_receivers_ca(receiver: Receiver) -> None:
    async with client_for(LOOPBACK) as client:  # no ca_file: system + certifi CAs only
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await post(client, receiver.https_url(), LOOPBACK)
    async with client_for(LOOPBACK, receiver) as client:
        assert (await post(client, receiver.https_url(), LOOPBACK)).response.status_code == 200


async def test_tls_verifies_the_hostname_although_the_guard_connects_to_the_ip(
    receiver: Receiver, client: Outbound
) -> None:
    sent = await post(client, receiver.https_url("/named", host="localhost"))
    assert sent.response.status_code == 200
    assert receiver.tls_server_names == ["localhost"]  # SNI: the URL's name, not 127.0.0.1
    assert receiver.requests[0].client_host == "127.0.0.1"
    assert receiver.requests[0].headers["host"].startswith("localhost:")


async def test_many_concurrent_deliveries_share_a_bounded_reused_pool(
    receiver: Receiver, client: Outbound
) -> None:
    import asyncio

    async def wave() -> set[int]:
        sent = await asyncio.gather(*(post(client, receiver.https_url("/many")) for _ in range(40)))
        assert all(s.response.status_code == 200 for s in sent)
        return {r.client_port for r in receiver.requests}

    first = await wave()
    receiver.reset()
    second = await wave()
    # The second wave rides the first wave's kept-alive connections.
    assert len(first) <= 40 and second <= first


async def test_a_connection_the_api_closed_while_idle_is_not_reused(tmp_path) -> None:
    """A kept-alive connection the server has since closed is seen as closed before the next
    delivery picks it (else that delivery fails and uses up an attempt)."""
    import asyncio

    with Receiver(tmp_path, keep_alive_seconds=0.3) as closing:
        async with client_for(LOOPBACK, closing) as client:
            for _ in range(2):
                sent = await post(client, closing.https_url("/idle"), LOOPBACK)
                assert sent.response.status_code == 200
                await asyncio.sleep(0.8)  # the receiver closes the idle connection meanwhile
            sent = await post(client, closing.https_url("/idle"), LOOPBACK)
            assert sent.response.status_code == 200
        ports = [r.client_port for r in closing.requests]
        assert len(ports) == 3 and len(set(ports)) == 3


async def test_cookies_set_by_one_delivery_never_ride_on_the_next(
    receiver: Receiver, client: Outbound
) -> None:
    receiver.respond(200, {"Set-Cookie": "session=abc123; Path=/"}, b"{}")
    await post(client, receiver.https_url("/first"))
    await post(client, receiver.https_url("/second"))
    assert "cookie" not in receiver.requests[1].headers
