"""What the vault accepts from a provider's token endpoint: only tokens that can travel in an
Authorization header (RFC 6749 Appendix A, 1*VSCHAR); anything else is the provider's failure,
never a stored token that leaks through a header error later."""

from __future__ import annotations

import pytest

from services.vault.oauth import ProviderUnreachable, _tokens


def test_a_well_formed_answer_gives_its_tokens():
    tokens = _tokens({"access_token": "a.b-c_d~e+/=", "refresh_token": "r 1", "scope": "x y"})
    assert (tokens.access_token, tokens.refresh_token, tokens.scopes) == (
        "a.b-c_d~e+/=",
        "r 1",
        ["x", "y"],
    )


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": "sk_live_abc\n"},
        {"access_token": "tab\there"},
        {"access_token": "del\x7f"},
        {"access_token": "naïve"},
        {"access_token": 12345},
        {"access_token": "fine", "refresh_token": "refresh\r\n"},
        {"access_token": "fine", "refresh_token": ["not", "text"]},
    ],
)
def test_a_token_that_cannot_go_into_a_header_is_refused(answer: dict):
    with pytest.raises(ProviderUnreachable) as refused:
        _tokens(answer)
    assert "sk_live" not in str(refused.value) and "refresh\r" not in str(refused.value)
