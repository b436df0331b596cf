"""A resolved secret out of error text in every form a library may quote it; Retry-After read
as RFC 9110 says and nothing else; a run's trace id from its traceparent."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.runner.delivery import retry_after_seconds
from services.runner.scrub import REDACTED, scrub, secret_forms
from services.runner.tracing import trace_id_of

SECRET = "sk_live_0123 4567/89ab\n"


@pytest.mark.parametrize(
    "quoted",
    [
        SECRET,
        repr(SECRET),
        repr(SECRET.encode()),
        quote(SECRET, safe=""),
        quote(SECRET),
        quote_plus(SECRET),
        json.dumps(SECRET),
        SECRET.encode("unicode_escape").decode(),
    ],
    ids=["raw", "repr", "bytes-repr", "url-encoded", "url-path", "form-encoded", "json", "escaped"],
)
def test_every_form_of_a_secret_is_redacted(quoted: str):
    forms = secret_forms(("api_key", {"key": SECRET, "header": "X-Api-Key"}))
    text = scrub(f"Illegal header value {quoted} in X-Api-Key", forms)
    assert text is not None
    assert "sk_live_0123" not in text and "4567" not in text and REDACTED in text
    assert "X-Api-Key" in text  # where a secret goes is not a secret


def test_each_line_of_a_multi_line_secret_is_redacted_alone():
    forms = secret_forms(("oauth2", {"access_token": "first-line-token\nsecond-line-token"}))
    text = scrub("got 'first-line-token' then 'second-line-token'", forms)
    assert text == f"got '{REDACTED}' then '{REDACTED}'"


def test_a_login_is_redacted_as_its_basic_pair_too():
    pair = base64.b64encode(b"ann:p@ss-word-42").decode()
    forms = secret_forms(("login", {"username": "ann", "password": "p@ss-word-42"}))
    assert scrub(f"Basic {pair}; p@ss-word-42", forms) == f"Basic {REDACTED}; {REDACTED}"


def test_values_too_short_to_be_told_from_words_are_left_alone():
    assert scrub("the key is abc", secret_forms(("api_key", {"key": "abc"}))) == "the key is abc"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("²", None),  # str.isdigit() says yes; float() raises
        ("٣", None),  # an Arabic-Indic digit
        ("1.5", None),
        ("-1", None),
        ("soon", None),
        ("Thu, 01 Jan 1970 00:02:00 GMT", 60.0),  # IMF-fixdate
        ("Thursday, 01-Jan-70 00:02:00 GMT", 60.0),  # obsolete RFC 850
        ("Thu Jan  1 00:02:00 1970", 60.0),  # asctime
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # in the past: at once
        ("Mon, 01 Jan 99999 00:00:00 GMT", None),
    ],
)
def test_retry_after_is_delta_seconds_in_ascii_digits_or_an_http_date(value, seconds):
    assert retry_after_seconds(value, 60.0) == seconds


@given(st.text())
def test_retry_after_never_raises(value: str):
    retry_after_seconds(value, 1_800_000_000.0)


def test_a_runs_trace_id_is_the_32_hex_of_its_traceparent():
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of(f"00-{trace}-00f067aa0ba902b7-01") == trace
    assert trace_id_of(None) == "" and trace_id_of("garbage") == ""
    assert trace_id_of(f"00-{'0' * 32}-00f067aa0ba902b7-01") == ""
