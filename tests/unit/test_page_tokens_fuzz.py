"""Every service's page-token parser, fuzzed: whatever a client sends as `page_token` ends as
INVALID_PAGE_TOKEN (an InvalidArgument, 422 at the gateway) or as a cursor the service issued,
never as another exception (a 500). `wrI` (`²`, a digit to `str.isdigit`, not to `int`) and
`YmVmb3JlOsKy` (`before:²`) crashed the runner's lists and identity's login history."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from services.identity.sessions import _decode_page_token, _encode_page_token
from services.kit.errors import InvalidArgument
from services.kit.tokens import b64url, cursor_number, page_cursor, page_token, unb64url
from services.runner.connections import next_page, page_args
from services.vault.credentials import _decode_token, _encode_token

# What a client may send: any text; base64 of any bytes; base64 of text shaped like each
# service's cursor around a fuzzed part (so the parsers past base64 are reached too).
_TEXT = st.text(max_size=60)
TOKENS = st.one_of(
    _TEXT,
    st.binary(max_size=60).map(b64url),
    _TEXT.map(lambda t: b64url(t.encode())),
    _TEXT.map(lambda t: b64url(f"before:{t}".encode())),
    _TEXT.map(lambda t: b64url(f"{t}|{uuid.uuid4()}".encode())),
    _TEXT.map(lambda t: b64url(f"2026-01-01T00:00:00+00:00|{t}".encode())),
    st.integers().map(lambda n: b64url(str(n).encode())),
    st.integers().map(lambda n: b64url(f"before:{n}".encode())),
)
CRASHED_BEFORE = ("wrI", "YmVmb3JlOsKy", "wrLCsg", "MTLCsg")


def refused_as_invalid_page_token(parse, token: str):
    """The parser's answer, or None when it refused with INVALID_PAGE_TOKEN (anything else
    raised fails the test)."""
    try:
        return parse(token)
    except InvalidArgument as refused:
        assert refused.reason == "INVALID_PAGE_TOKEN" and refused.field == "page_token"
        return None


@pytest.mark.parametrize("token", CRASHED_BEFORE)
def test_the_tokens_that_crashed_are_invalid_page_tokens(token: str):
    for parse in (lambda t: page_args(20, t), _decode_page_token, _decode_token):
        with pytest.raises(InvalidArgument) as refused:
            parse(token)
        assert refused.value.reason == "INVALID_PAGE_TOKEN"


@given(TOKENS)
@example("wrI")
@example("=" * 7)
@example("a" * 10_000)
def test_the_kit_cursor_is_a_printable_ascii_cursor_or_invalid(token: str):
    cursor = refused_as_invalid_page_token(page_cursor, token)
    if cursor is not None:
        assert cursor.isascii() and cursor.isprintable()


@given(_TEXT, st.integers(min_value=-5, max_value=5), st.integers(min_value=0, max_value=2**64))
@example("²", 0, 2**63)
@example("٣", 0, 2**63)
def test_a_cursor_number_is_in_range_or_invalid(text: str, low: int, high: int):
    number = refused_as_invalid_page_token(lambda t: cursor_number(t, low=low, high=high), text)
    if number is not None:
        assert low <= number < high and number == int(text)


@given(TOKENS)
def test_the_runner_lists_read_a_sequence_number_or_refuse(token: str):
    parsed = refused_as_invalid_page_token(lambda t: page_args(20, t), token)
    if parsed is not None and token:
        size, after = parsed
        assert size == 20 and after is not None and 0 <= after < 2**63


@given(TOKENS)
def test_identity_login_history_reads_a_row_id_or_refuses(token: str):
    before = refused_as_invalid_page_token(_decode_page_token, token)
    assert before is None or 0 < before < 2**63


@given(TOKENS)
def test_the_vault_list_reads_an_aware_time_and_a_uuid_or_refuses(token: str):
    parsed = refused_as_invalid_page_token(_decode_token, token)
    if parsed is not None:
        moment, credential_id = parsed
        assert moment.tzinfo is not None and str(uuid.UUID(credential_id)) == credential_id


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_every_token_a_service_issues_reads_back(n: int):
    assert page_args(5, next_page([SimpleNamespace(seq=n)] * 6, 5)[1]) == (5, n)
    assert _decode_page_token(_encode_page_token(n)) == n
    row = {"create_time": datetime.fromtimestamp(n % 2**33, UTC), "id": str(uuid.UUID(int=n))}
    assert _decode_token(_encode_token(row)) == (row["create_time"], row["id"])
    assert page_cursor(page_token(f"before:{n}")) == f"before:{n}"


@given(st.text(max_size=40))
def test_unb64url_raises_only_value_error(text: str):
    try:
        decoded = unb64url(text)
    except ValueError:
        return
    assert unb64url(b64url(decoded)) == decoded
