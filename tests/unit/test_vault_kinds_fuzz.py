"""A credential's secret as the vault validates it, fuzzed: anything refused is INVALID_SECRET
naming the field, and anything accepted can go into the request it is for (no control character
in any value sent in a header or query, header values latin-1), so an HTTP client never refuses
it with an error that quotes the secret."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.kit.errors import InvalidArgument
from services.vault.kinds import validate

CONTROLS = [chr(c) for c in range(0x20)] + ["\x7f"]
_VALUES = st.one_of(
    st.text(max_size=40),
    st.tuples(st.text(max_size=20), st.sampled_from(CONTROLS)).map("".join),
    st.integers(),
    st.none(),
)


def sendable(value: str, *, header: bool) -> bool:
    if any(ch < " " or ch == "\x7f" for ch in value):
        return False
    try:
        value.encode("latin-1" if header else "utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize("control", ["\n", "\r\n", "\t", "\x00", "\x1b", "\x7f"])
@pytest.mark.parametrize(
    ("kind", "secret", "field"),
    [
        ("api_key", {"key": "sk_live_0123456789{c}", "header": "X-Api-Key"}, "secret.key"),
        ("api_key", {"key": "sk_live_{c}0123456789", "query": "api_key"}, "secret.key"),
        ("oauth2", {"access_token": "at_0123456789{c}"}, "secret.access_token"),
        ("oauth2", {"access_token": "at", "refresh_token": "rt{c}"}, "secret.refresh_token"),
        ("login", {"username": "ann{c}", "password": "pw"}, "secret.username"),
        ("login", {"username": "ann", "password": "pw{c}"}, "secret.password"),
    ],
)
def test_a_control_character_in_a_sent_value_is_refused_naming_the_field(
    kind: str, secret: dict, field: str, control: str
):
    with_control = {k: v.replace("{c}", control) for k, v in secret.items()}
    with pytest.raises(InvalidArgument) as refused:
        validate(kind, with_control)
    assert refused.value.reason == "INVALID_SECRET" and refused.value.field == field
    assert with_control[field.split(".")[1]] not in refused.value.message


def test_a_header_value_must_be_latin_1_but_a_query_value_need_not():
    with pytest.raises(InvalidArgument) as refused:
        validate("api_key", {"key": "sk_€_0123456789", "header": "X-Api-Key"})
    assert refused.value.field == "secret.key"
    with pytest.raises(InvalidArgument):
        validate("oauth2", {"access_token": "at_€"})
    assert validate("api_key", {"key": "sk_€_0123", "query": "k"})["key"] == "sk_€_0123"
    assert validate("api_key", {"key": "clé", "header": "X-Key"})["key"] == "clé"
    assert validate("login", {"username": "zoë", "password": "пароль"})["password"] == "пароль"


@given(
    st.sampled_from(["api_key", "login", "oauth2"]),
    st.dictionaries(
        st.sampled_from(
            [
                "key",
                "header",
                "query",
                "username",
                "password",
                "access_token",
                "refresh_token",
                "scopes",
                "other",
            ]
        ),  # fmt: skip
        _VALUES,
        max_size=4,
    ),
)
def test_any_secret_is_refused_naming_a_field_or_stored_sendable(kind: str, secret: dict):
    try:
        stored = validate(kind, secret)
    except InvalidArgument as refused:
        assert refused.reason == "INVALID_SECRET" and refused.field.startswith("secret.")
        return
    header_bound = {"access_token"} | ({"key"} if "header" in stored else set())
    for field in ("key", "username", "password", "access_token", "refresh_token"):
        if field in stored:
            assert sendable(stored[field], header=field in header_bound), field


_TEXTS = st.one_of(
    st.text(min_size=1, max_size=30),
    st.tuples(st.text(max_size=20), st.sampled_from(CONTROLS)).map("".join),
)
WELL_SHAPED = st.one_of(
    st.tuples(st.just("api_key"), st.fixed_dictionaries({"key": _TEXTS, "header": st.just("X-K")})),
    st.tuples(st.just("api_key"), st.fixed_dictionaries({"key": _TEXTS, "query": st.just("k")})),
    st.tuples(st.just("login"), st.fixed_dictionaries({"username": _TEXTS, "password": _TEXTS})),
    st.tuples(
        st.just("oauth2"),
        st.fixed_dictionaries({"access_token": _TEXTS}, optional={"refresh_token": _TEXTS}),
    ),
)


@given(WELL_SHAPED)
def test_a_well_shaped_secret_is_stored_exactly_when_every_sent_value_is_sendable(shaped):
    kind, secret = shaped
    header_bound = {"access_token"} | ({"key"} if "header" in secret else set())
    expected = all(
        sendable(secret[f], header=f in header_bound)
        for f in ("key", "username", "password", "access_token", "refresh_token")
        if f in secret
    )
    try:
        validate(kind, secret)
    except InvalidArgument as refused:
        assert not expected and refused.reason == "INVALID_SECRET"
        return
    assert expected
