"""Password hashes that standard tools read, and rules that say which one failed."""

from __future__ import annotations

import asyncio

import pytest
from passlib.hash import pbkdf2_sha512

from services.identity.passwords import (
    PasswordHasher,
    ab64_decode,
    check_hash,
    check_rules,
    encode_hash,
    parse_hash,
)
from services.identity.settings import IdentitySettings
from services.kit.errors import InvalidArgument

PASSWORD = "correct horse battery staple"


def test_default_is_owasp_210000_and_never_below_the_promised_200000():
    assert IdentitySettings(_env_file=None).pbkdf2_iterations == 210_000
    assert IdentitySettings(pbkdf2_iterations=200_000).pbkdf2_iterations == 200_000
    with pytest.raises(ValueError, match="at least 200000"):
        IdentitySettings(pbkdf2_iterations=199_999)


def test_hash_is_passlib_modular_crypt_format_and_passlib_verifies_it():
    stored = encode_hash(PASSWORD, 210_000)
    scheme, iterations, salt, checksum = stored.split("$")[1:]
    assert (scheme, iterations) == ("pbkdf2-sha512", "210000")
    assert len(ab64_decode(salt)) == 16 and len(ab64_decode(checksum)) == 64
    assert pbkdf2_sha512.verify(PASSWORD, stored)
    assert not pbkdf2_sha512.verify(PASSWORD + "!", stored)


def test_we_verify_what_passlib_made():
    made = pbkdf2_sha512.using(rounds=200_000, salt_size=16).hash(PASSWORD)
    assert check_hash(PASSWORD, made)
    assert not check_hash("something else entirely", made)
    assert parse_hash(made).iterations == 200_000


def test_salts_are_fresh():
    assert encode_hash(PASSWORD, 200_000) != encode_hash(PASSWORD, 200_000)


def test_unicode_is_normalised_nfkc_before_hashing():
    composed, decomposed = "pässwörd-ﬁne", "pa\u0308sswo\u0308rd-fine"
    assert check_hash(decomposed, encode_hash(composed, 200_000))


async def test_hasher_flags_old_parameters_for_rehash_and_refuses_unknown_accounts():
    hasher = PasswordHasher(iterations=210_000, threads=2)
    try:
        old = encode_hash(PASSWORD, 200_000)
        verdict = await hasher.verify(PASSWORD, old)
        assert verdict.ok and verdict.needs_rehash
        current = await hasher.hash(PASSWORD)
        assert (await hasher.verify(PASSWORD, current)) == type(verdict)(True, False)
        assert not (await hasher.verify(PASSWORD, None)).ok  # the dummy hash: same work
        assert not (await hasher.verify(PASSWORD, "$md5$garbage")).ok
    finally:
        hasher.close()


async def test_hashing_runs_off_the_event_loop():
    hasher = PasswordHasher(iterations=210_000, threads=2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        await asyncio.gather(*(hasher.hash(PASSWORD) for _ in range(4)))
    finally:
        task.cancel()
        hasher.close()
    assert ticks >= 5  # the loop kept running while four hashes were computed


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("Tiny7!", "PASSWORD_TOO_SHORT"),
        ("x" * 1025, "PASSWORD_TOO_LONG"),
        ("password123", "PASSWORD_TOO_COMMON"),
        ("Password123", "PASSWORD_TOO_COMMON"),
        ("qwertyuiop", "PASSWORD_TOO_COMMON"),
        ("my Ann@Example.com key", "PASSWORD_CONTAINS_EMAIL"),
        ("ann@example.com", "PASSWORD_CONTAINS_EMAIL"),
    ],
)
def test_rules_name_the_rule_that_failed(password: str, reason: str):
    with pytest.raises(InvalidArgument) as refused:
        check_rules(password, "ann@example.com")
    assert refused.value.reason == reason
    assert refused.value.field == "password"
    assert password not in refused.value.message


@pytest.mark.parametrize(
    "password",
    ["correct horse battery", "x" * 1024, "日本語のパスワードです", "🔒🔑🗝️ emoji pass"],
)
def test_rules_accept_any_unicode_from_8_to_1024_characters(password: str):
    check_rules(password, "ann@example.com")


def test_length_counts_characters_after_normalisation():
    with pytest.raises(InvalidArgument):
        check_rules("ﬁﬁﬁ", "a@b.co")  # 3 ligatures, 6 characters after NFKC
    check_rules("ﬁﬁﬁﬁ", "a@b.co")  # 8 after NFKC


def test_unknown_accounts_cost_one_hash_of_the_same_parameters():
    """No timing test (those belong in bench/): the dummy an unknown e-mail is checked against is
    a hash of the current parameters, so both answers cost the same PBKDF2 work."""
    hasher = PasswordHasher(iterations=210_000, threads=1)
    try:
        dummy = parse_hash(hasher._dummy)
        assert dummy.iterations == hasher.iterations and len(dummy.salt) == 16
    finally:
        hasher.close()
