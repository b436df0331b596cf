"""Envelope encryption from `cryptography`'s AES-GCM: ciphertexts bound to their place."""

from __future__ import annotations

import json

import pytest

from services.kit.errors import InvalidArgument
from services.vault import kinds
from services.vault.keys import (
    KeyFile,
    KeyRing,
    KeyUnavailable,
    Tampered,
    new_data_key,
    seal,
    secret_aad,
    unseal,
)


def test_seal_uses_a_fresh_nonce_and_opens_only_with_its_associated_data():
    key = new_data_key()
    aad = secret_aad("user-a", "cred-1", "api_key")
    first, second = seal(key, b"s3cret", aad), seal(key, b"s3cret", aad)
    assert first != second and first[:12] != second[:12]  # 96-bit random nonce each time
    assert unseal(key, first, aad) == b"s3cret"
    for wrong in (
        secret_aad("user-b", "cred-1", "api_key"),  # another user
        secret_aad("user-a", "cred-2", "api_key"),  # another row
        secret_aad("user-a", "cred-1", "login"),  # another kind
    ):
        with pytest.raises(Tampered):
            unseal(key, first, wrong)
    flipped = bytearray(first)
    flipped[20] ^= 1
    with pytest.raises(Tampered):
        unseal(key, bytes(flipped), aad)
    with pytest.raises(Tampered):
        unseal(new_data_key(), first, aad)


def test_a_managed_key_ring_is_generated_private_and_rotates(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="leadmesh.vault.keys"):
        ring = KeyRing.from_setting(None, tmp_path)
    assert "production must supply VAULT_MASTER_KEYS" in caplog.text
    path = tmp_path / "master-keys.json"
    assert ring.managed and ring.current == "v1"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    data_key = new_data_key()
    version, wrapped = ring.wrap("user-a", data_key)
    assert version == "v1" and data_key not in wrapped
    assert ring.add_version() == "v2" and ring.current == "v2"
    assert ring.unwrap("user-a", "v1", wrapped) == data_key  # old versions still open
    with pytest.raises(Tampered):
        ring.unwrap("user-b", "v1", wrapped)  # a data key is bound to its user
    ring.remove_version("v1")
    with pytest.raises(KeyUnavailable):
        ring.unwrap("user-a", "v1", wrapped)  # retired: fails closed


def test_supplied_keys_inline_and_a_second_process_sees_a_new_version(tmp_path):
    inline = KeyFile("k2", {"k1": b"\x01" * 32, "k2": b"\x02" * 32}).dumps()
    ring = KeyRing.from_setting(inline, tmp_path)
    assert not ring.managed and ring.current == "k2" and ring.versions == ["k1", "k2"]
    one = KeyRing.from_setting(None, tmp_path)
    two = KeyRing.from_setting(str(tmp_path / "master-keys.json"), tmp_path)
    one.add_version()
    version, wrapped = one.wrap("u", b"\x07" * 32)
    assert two.unwrap("u", version, wrapped) == b"\x07" * 32  # reloads the file on a miss


def test_key_files_are_validated():
    with pytest.raises(ValueError):
        KeyFile.parse(json.dumps({"current": "v9", "keys": {"v1": "AAAA"}}))


@pytest.mark.parametrize(
    ("kind", "secret", "field"),
    [
        ("api_key", {"key": "k" * 20}, "secret.header"),
        ("api_key", {"key": "k" * 20, "header": "X-A", "query": "a"}, "secret.header"),
        ("api_key", {"key": "", "header": "X-Api-Key"}, "secret.key"),
        ("api_key", {"key": "abc", "header": "Bad Header"}, "secret.header"),
        ("login", {"username": "ann"}, "secret.password"),
        ("login", {"username": "ann", "password": "pw", "otp": "1"}, "secret.otp"),
        ("oauth2", {"refresh_token": "r"}, "secret.access_token"),
        ("oauth2", {"access_token": "a", "expires_at": "soon"}, "secret.expires_at"),
    ],
)
def test_secret_shapes_are_checked_and_errors_name_fields_not_values(kind, secret, field):
    with pytest.raises(InvalidArgument) as refused:
        kinds.validate(kind, secret)
    assert refused.value.reason == "INVALID_SECRET" and refused.value.field == field
    for value in secret.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in refused.value.message


def test_hints_reveal_nothing_of_passwords():
    assert kinds.hint("api_key", {"key": "sk_live_0123456789abcdef"}) == "…cdef"
    assert kinds.hint("api_key", {"key": "short"}) == ""
    assert kinds.hint("login", {"username": "ann@example.com", "password": "hunter2hunter2"}) == (
        "….com"
    )
    assert kinds.hint("oauth2", {"access_token": "a" * 40}) == ""


SECRET_OF = {
    "api_key": {"key": "sk_live_0123456789abcdef", "query": "api_key"},
    "login": {"username": "ann@example.com", "password": "pässword with spaces"},
    "oauth2": {
        "access_token": "at",
        "refresh_token": "rt",
        "expires_at": 4102444800,
        "scopes": ["contacts.read", "contacts.write"],
    },
}


@pytest.mark.parametrize("kind", ["api_key", "login", "oauth2"])
def test_secrets_are_sealed_as_the_struct_a_resolve_sends(kind):
    stored = kinds.validate(kind, SECRET_OF[kind])
    plaintext = kinds.encode(stored)
    decoded = kinds.decode(plaintext, kinds.SECRET_FORMAT)
    assert kinds.as_dict(decoded) == stored  # whole numbers stay whole (expires_at)
    assert decoded.SerializeToString(deterministic=True) == plaintext
    as_json = json.dumps(stored).encode()  # format 1, as older rows hold it
    assert kinds.as_dict(kinds.decode(as_json, kinds.JSON_FORMAT)) == stored
    for wrong, version in ((as_json, kinds.STRUCT_FORMAT), (plaintext, 9), (b"\xff", 1)):
        with pytest.raises(kinds.Undecodable):
            kinds.decode(wrong, version)
