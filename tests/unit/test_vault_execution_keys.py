"""The execution keys' rules without a server: what a request may name, the derivation (RFC 5869
HKDF-SHA256, bound to participant, category, day and user), and wrapped keys of one kind never
unwrapping as another."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.kit.errors import InvalidArgument
from services.vault.execution_keys import (
    MAX_KEYS,
    check_category,
    check_day,
    check_participant,
    check_refs,
    check_user,
    derive,
)
from services.vault.keys import DATA_KEY, DAY_KEY, OWNER_KEY, KeyRing, Tampered, key_subject


@pytest.mark.parametrize("day", ["2026-12-03", "2024-02-29", "0001-01-01"])
def test_a_day_is_a_date(day: str):
    assert check_day(day) == day


@pytest.mark.parametrize(
    "day",
    [
        "",
        "2026-12-3",
        "20261203",
        "2026-02-30",
        "2026-12-03T00:00",
        " 2026-12-03",
        "２０２６-12-03",
    ],
)
def test_anything_else_is_an_invalid_day(day: str):
    with pytest.raises(InvalidArgument) as refused:
        check_day(day)
    assert refused.value.reason == "INVALID_DAY"


def test_a_category_is_lowercase_letters_digits_and_underscores_up_to_64():
    assert check_category("webhooks_log") == "webhooks_log"
    assert check_category("a" * 64)
    for wrong in ("", "Webhooks", "a-b", "a|b", "a b", "a" * 65, "é"):
        with pytest.raises(InvalidArgument) as refused:
            check_category(wrong)
        assert refused.value.reason == "INVALID_CATEGORY"


def test_users_participants_and_the_number_of_keys_are_bounded():
    for wrong in ("", "x" * 65, "a\nb"):
        with pytest.raises(InvalidArgument) as refused:
            check_user(wrong)
        assert refused.value.reason == "USER_ID_REQUIRED"
    assert check_participant("runner") == "runner"
    with pytest.raises(InvalidArgument):
        check_participant("Runner|x")
    assert len(check_refs([("c", "2026-12-03")] * MAX_KEYS)) == MAX_KEYS
    with pytest.raises(InvalidArgument) as refused:
        check_refs([("c", "2026-12-03")] * (MAX_KEYS + 1))
    assert refused.value.reason == "TOO_MANY_KEYS"


def test_the_derived_key_is_hkdf_sha256_of_both_halves_bound_to_where_it_belongs():
    owner, day = os.urandom(32), os.urandom(32)
    ref = ("webhooks_log", "2026-12-03")
    expected = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"leadmesh-execution|v1|runner|webhooks_log|2026-12-03|user-a",
    ).derive(owner + day)
    assert derive(owner, day, "runner", ref, "user-a") == expected
    others = {
        derive(owner, day, "identity", ref, "user-a"),
        derive(owner, day, "runner", ("run_events", ref[1]), "user-a"),
        derive(owner, day, "runner", (ref[0], "2026-12-04"), "user-a"),
        derive(owner, day, "runner", ref, "user-b"),
        derive(os.urandom(32), day, "runner", ref, "user-a"),
        derive(owner, os.urandom(32), "runner", ref, "user-a"),
    }
    assert expected not in others and len(others) == 6


def test_a_wrapped_key_opens_only_as_its_kind_and_subject(tmp_path):
    ring = KeyRing.from_setting(None, tmp_path)
    key = os.urandom(32)
    day = key_subject(DAY_KEY, {"participant": "runner", "category": "c", "day": "2026-12-03"})
    version, wrapped = ring.wrap("user-a", key, OWNER_KEY)
    assert ring.unwrap("user-a", version, wrapped, OWNER_KEY) == key
    for subject, kind in (("user-a", DATA_KEY), ("user-b", OWNER_KEY), (day, DAY_KEY)):
        with pytest.raises(Tampered):
            ring.unwrap(subject, version, wrapped, kind)
    version, wrapped = ring.wrap(day, key, DAY_KEY)
    assert ring.unwrap(day, version, wrapped, DAY_KEY) == key
    other_day = day.replace("2026-12-03", "2026-12-04")
    with pytest.raises(Tampered):
        ring.unwrap(other_day, version, wrapped, DAY_KEY)
