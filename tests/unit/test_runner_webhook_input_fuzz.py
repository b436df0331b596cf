"""What ingest parses of a third party's request, fuzzed: the signature header ends as a verified
signature or SIGNATURE_INVALID (never a 500: `t=²` and `v1=é` crashed it), redaction never raises
and leaves no secret-named value behind in headers or query, and the body and content type always
parse to one of the four encodings."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlencode

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from services.kit.errors import Unauthenticated
from services.kit.tokens import sha256_hex
from services.runner.ingest import parse_body
from services.runner.redact import REDACTED, is_secret_name, redact
from services.runner.signature import parse, verify

SECRET, NOW, WINDOW = "whsec_fuzz", 1_800_000_000, 300


def signed(body: bytes, stamp: int | str = NOW, secret: str = SECRET) -> str:
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


_PIECE = st.tuples(
    st.sampled_from(["t", "v1", "v0", "", " t", "T", "v1 "]),
    st.sampled_from(["=", "", "=="]),
    st.one_of(st.text(max_size=70), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
).map("".join)
HEADERS = st.one_of(st.none(), st.text(max_size=200), st.lists(_PIECE, max_size=6).map(",".join))


@pytest.mark.parametrize(
    "header", ["t=²", "v1=é", f"t=²,v1={'0' * 64}", f"t={NOW},v1=é", f"t={NOW},v1={'é' * 64}"]
)
def test_the_headers_that_crashed_are_signature_invalid(header: str):
    with pytest.raises(Unauthenticated) as refused:
        verify(SECRET, header, b"{}", NOW, WINDOW)
    assert refused.value.reason == "SIGNATURE_INVALID"


@given(HEADERS, st.binary(max_size=64), st.floats(allow_nan=True), st.integers(0, 10**6))
@example(f"t=٣{NOW},v1={'0' * 64}", b"", NOW, WINDOW)
def test_any_signature_header_verifies_or_is_signature_invalid(header, body, now, tolerance):
    try:
        verified = verify(SECRET, header, body, now, tolerance)
    except Unauthenticated as refused:
        assert refused.reason == "SIGNATURE_INVALID"
        return
    assert len(verified.digest) == 64


@given(st.binary(max_size=200), st.integers(NOW - WINDOW, NOW + WINDOW), st.text(max_size=80))
def test_a_valid_signature_verifies_and_names_itself_whatever_else_the_header_holds(
    body: bytes, stamp: int, noise: str
):
    alone = verify(SECRET, signed(body, stamp), body, NOW, WINDOW)
    # The same signature with another (rotated-out) value and noise is the same signature:
    # a replay cannot pass as new by adding candidates.
    padded = f"{signed(body, stamp, 'whsec_old')},{signed(body, stamp)[-67:]},x={noise}"
    assert verify(SECRET, padded, body, NOW, WINDOW) == alone
    assert alone.valid_until == stamp + WINDOW
    other = verify(SECRET, signed(body + b"!", stamp), body + b"!", NOW, WINDOW)
    assert other.digest != alone.digest


def test_a_stale_or_future_signature_is_refused():
    for stamp in (NOW - WINDOW - 1, NOW + WINDOW + 1):
        with pytest.raises(Unauthenticated):
            verify(SECRET, signed(b"x", stamp), b"x", NOW, WINDOW)
    with pytest.raises(Unauthenticated):  # a stamp's text is signed: 0-padding is another one
        verify(SECRET, signed(b"x").replace("t=", "t=0"), b"x", NOW, WINDOW)
    assert parse(signed(b"x"), WINDOW).time == NOW


# Secret-looking names as senders spell them: any case, any separator, any prefix.
_WORDS = ["auth", "token", "key", "secret", "signature", "hmac", "password", "session", "cookie"]
_SEPARATED = st.tuples(
    st.sampled_from(["", "x-", "X_", "shopify-", "api.", "Access-"]),
    st.sampled_from(_WORDS),
    st.sampled_from(["", "-sha256", "_id", "s"]),
    st.sampled_from(["-", "_", ".", ""]),
).map(lambda p: p[0] + p[1][:3] + p[3] + p[1][3:] + p[2])  # "pass_word", "ses.sion"
SECRET_NAMES = st.tuples(_SEPARATED, st.booleans()).map(lambda p: p[0].upper() if p[1] else p[0])
_NAMES = st.text(max_size=20)


@pytest.mark.parametrize(
    "name",
    ["X-Shopify-Hmac-Sha256", "X-Access-Key", "api_key", "API-KEY", "apikey", "x-pass_word",
     "X-Hub-Signature-256", "Proxy-Authorization", "Set-Cookie", "x-csrf-token", "SessionId",
     "ｔｏｋｅｎ"],
)  # fmt: skip
def test_secret_names_are_recognised_however_spelt(name: str):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["content-type", "idempotency-key", "utm_source", "x-request-id"])
def test_ordinary_names_are_kept(name: str):
    assert not is_secret_name(name)


@given(
    st.lists(st.tuples(st.one_of(SECRET_NAMES, _NAMES), st.text(max_size=30)), max_size=6),
    st.lists(st.tuples(st.one_of(SECRET_NAMES, _NAMES), st.text(max_size=30)), max_size=6),
    st.text(max_size=80),
)
def test_redaction_keeps_no_value_of_a_secret_name_in_headers_or_query(headers, params, raw):
    query = f"{urlencode(params)}&{raw}" if raw else urlencode(params)
    redacted = redact(headers, query)
    for name, value in redacted.headers:
        if is_secret_name(name):
            assert value == REDACTED and name in redacted.names
    for name, values in parse_qs(redacted.query, keep_blank_values=True).items():
        if is_secret_name(name):
            assert set(values) <= {REDACTED, ""}, name
            assert REDACTED not in values or name in redacted.names
    assert [n for n, _ in redacted.headers] == [n.lower() for n, _ in headers]
    assert len(set(redacted.names)) == len(redacted.names)


@given(st.lists(st.tuples(SECRET_NAMES, st.from_regex(r"sk_[a-z0-9]{12}", fullmatch=True))))
def test_every_secret_named_value_is_gone_and_listed(pairs):
    assume(pairs)
    redacted = redact(pairs, urlencode(pairs))
    kept = f"{redacted.headers} {redacted.query}"
    for name, value in pairs:
        assert value not in kept
        assert name.lower() in redacted.names and name in redacted.names


def test_what_is_not_a_secret_stays_byte_for_byte():
    query = "utm_source=ad&utm_source=mail&empty=&api_key=sk_1&Token=t0k&x=%C3%A9&bare"
    redacted = redact([("X-Request-Source", "crm-7"), ("X-Api-Key", "k")], query)
    assert redacted.query == (
        "utm_source=ad&utm_source=mail&empty=&api_key=[redacted]&Token=[redacted]&x=%C3%A9&bare"
    )
    assert redacted.headers == [["x-request-source", "crm-7"], ["x-api-key", REDACTED]]
    assert redacted.names == ["x-api-key", "api_key", "Token"]


@given(st.binary(max_size=300), st.text(max_size=60))
@example(b'{"a": NaN}', "application/json")
@example(b"\xff\xfe", "application/x-www-form-urlencoded; charset=²")
def test_any_body_and_content_type_parse_to_one_encoding(body: bytes, content_type: str):
    encoding, _value, text = parse_body(body, content_type)
    assert encoding in {"json", "form", "text", "base64"} and isinstance(text, str)


@given(st.text(max_size=300))
def test_any_idempotency_key_is_keyed_by_its_digest(key: str):
    assert len(sha256_hex(key)) == 64
