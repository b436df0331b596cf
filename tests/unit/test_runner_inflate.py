"""Compressed response bodies: decoded as httpx would, but never inflated past the cap — a gzip
bomb from a real receiver costs the runner a few hundred kilobytes, not its inflated size."""

from __future__ import annotations

import gzip
import ipaddress
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from services.runner.guard import EgressPolicy
from services.runner.inflate import Inflater
from services.runner.outbound import MAX_BODY, Outbound, make_client, send
from tests.support.receiver import Receiver

POLICY = EgressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
INFLATED = 64 * 1024 * 1024  # one 64 KiB network read of this bomb inflates to about all of it


def _gzip(data: bytes, chunks: int = 1) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return b"".join(compressor.compress(data) for _ in range(chunks)) + compressor.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _gzip(bytes(1024 * 1024), INFLATED // (1024 * 1024))  # 64 MiB of zeros, ~65 KB


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with Receiver(tmp_path_factory.mktemp("receiver")) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(receiver: Receiver) -> None:
    receiver.reset()


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[Outbound]:
    client = make_client(POLICY, connect_timeout=5, read_timeout=5, ca_file=str(receiver.ca_file))
    async with client:
        yield client


async def post(client: Outbound, receiver: Receiver):
    return await send(
        client, "POST", receiver.https_url(), headers={}, content=b"lead", policy=POLICY
    )


async def peak_of_a_delivery(client: Outbound, receiver: Receiver):
    tracemalloc.start()
    try:
        sent = await post(client, receiver)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sent, peak


LEAD = b'{"id": 7, "status": "created"}'


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(LEAD)),
        ("x-gzip", gzip.compress(LEAD)),
        ("deflate", zlib.compress(LEAD)),
        ("deflate", zlib.compress(LEAD)[2:-4]),  # raw deflate, as some servers send it
        ("gzip, gzip", gzip.compress(gzip.compress(LEAD))),
        ("identity", LEAD),
    ],
    ids=["gzip", "x-gzip", "deflate", "raw-deflate", "gzip-twice", "identity"],
)
async def test_compressed_responses_are_decoded(receiver, client, encoding, body) -> None:
    receiver.respond(200, {"Content-Encoding": encoding}, body)
    sent = await post(client, receiver)
    assert (sent.body, sent.truncated) == (LEAD, False)


async def test_a_gzip_bomb_is_inflated_only_up_to_the_cap(receiver, client, bomb) -> None:
    receiver.respond(200, {"Content-Encoding": "gzip"}, bomb)
    sent, peak = await peak_of_a_delivery(client, receiver)
    assert sent.body == bytes(MAX_BODY) and sent.truncated
    # httpx's decoder inflates a whole 64 KiB read: 64 MiB here. Bounded, a few chunks.
    assert peak < 2 * 1024 * 1024, peak


async def test_a_gzip_bomb_inside_a_gzip_bomb_is_bounded_too(receiver, client, bomb) -> None:
    receiver.respond(200, {"Content-Encoding": "gzip, gzip"}, gzip.compress(bomb))
    sent, peak = await peak_of_a_delivery(client, receiver)
    assert sent.body == bytes(MAX_BODY) and sent.truncated
    assert peak < 2 * 1024 * 1024, peak


async def test_a_gzip_response_keeps_its_connection_for_the_next(receiver, client) -> None:
    receiver.respond(200, {"Content-Encoding": "gzip"}, gzip.compress(LEAD), times=3)
    for _ in range(3):
        assert (await post(client, receiver)).body == LEAD
    assert len({r.client_port for r in receiver.requests}) == 1


async def test_a_corrupt_gzip_body_is_a_decoding_error(receiver, client) -> None:
    receiver.respond(200, {"Content-Encoding": "gzip"}, b"\x1f\x8b not gzip at all")
    with pytest.raises(httpx.DecodingError, match="not valid gzip"):
        await post(client, receiver)


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, br", ", ".join(["gzip"] * 5)])
async def test_an_encoding_that_cannot_be_bounded_keeps_the_raw_bytes(
    receiver, client, encoding
) -> None:
    receiver.respond(200, {"Content-Encoding": encoding}, b"\x8b\x00raw")
    assert (await post(client, receiver)).body == b"\x8b\x00raw"


def test_the_inflater_never_gives_more_than_asked_and_loses_nothing(bomb) -> None:
    inflater = Inflater(["gzip"])
    got = 0
    reads = [bomb[i : i + 4096] for i in range(0, len(bomb), 4096)]
    for read in reads:
        out = inflater.decode(read, 1000)
        assert len(out) <= 1000
        got += len(out)
        while len(out) == 1000:  # the rest of what was read is still there
            out = inflater.decode(b"", 1000)
            got += len(out)
    assert got == INFLATED and inflater.finished
