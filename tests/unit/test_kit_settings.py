"""Settings as operators write them: list settings comma-separated or JSON, and a wrong value
explained in one line naming its variable (services/kit/config.py)."""

from __future__ import annotations

import json
import typing

import pytest
from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.settings import GatewaySettings
from services.kit.config import InvalidSettings, load_settings
from services.runner.settings import RunnerSettings
from tests.unit.test_docs import settings_classes

LIST_SETTINGS = [
    (RunnerSettings, "RUNNER_ALLOWED_NETWORKS", "allowed_networks", "127.0.0.0/8", "10.0.0.0/8"),
    (RunnerSettings, "RUNNER_EGRESS_ADDRESSES", "egress_addresses", "198.51.100.7", "2001:db8::7"),
    (GatewaySettings, "GATEWAY_TRUSTED_PROXIES", "trusted_proxies", "127.0.0.1/32", "::1/128"),
]


@pytest.mark.parametrize(("cls", "env", "field", "one", "two"), LIST_SETTINGS)
@pytest.mark.parametrize(
    "written",
    [
        "{one},{two}",
        "{one}, {two}",
        " {one} ,{two} ,",
        '["{one}", "{two}"]',
        ' [ "{one}","{two}" ] ',
    ],
)
def test_a_list_setting_reads_commas_or_json(monkeypatch, cls, env, field, one, two, written):
    monkeypatch.setenv(env, written.format(one=one, two=two))
    assert getattr(load_settings(cls), field) == [one, two]


@pytest.mark.parametrize(("cls", "env", "field", "one", "two"), LIST_SETTINGS)
@pytest.mark.parametrize("written", ["", "  ", "[]", ","])
def test_an_empty_list_setting_is_an_empty_list(monkeypatch, cls, env, field, one, two, written):
    monkeypatch.setenv(env, written)
    assert getattr(load_settings(cls), field) == []


@pytest.mark.parametrize(("cls", "env", "field", "one", "two"), LIST_SETTINGS)
def test_a_single_value_is_a_list_of_one(monkeypatch, cls, env, field, one, two):
    monkeypatch.setenv(env, one)
    assert getattr(load_settings(cls), field) == [one]


def test_every_list_setting_of_every_process_takes_commas():
    """A list, set or tuple setting added later without CommaList would demand JSON again."""
    for cls in settings_classes():
        for name, field in cls.model_fields.items():
            if typing.get_origin(field.annotation) in (list, set, frozenset, tuple):
                assert NoDecode in field.metadata, f"{cls.__name__}.{name} is not a CommaList"


@pytest.mark.parametrize(
    ("env", "value", "says"),
    [
        ("RUNNER_ALLOWED_NETWORKS", "not-a-cidr", "does not appear to be an IPv4 or IPv6 network"),
        ("RUNNER_ALLOWED_NETWORKS", '["127.0.0.0/8"', "not a JSON list"),
        ("RUNNER_EGRESS_ADDRESSES", "10.0.0.0/8", "does not appear to be an IPv4 or IPv6 address"),
        ("RUNNER_CONCURRENCY", "0", "greater than or equal to 1"),
        ("LEADMESH_RPC_TIMEOUT", "soon", "valid number"),
    ],
)
def test_a_wrong_setting_is_one_line_naming_its_variable(monkeypatch, env, value, says):
    monkeypatch.setenv(env, value)
    with pytest.raises(InvalidSettings) as raised:
        load_settings(RunnerSettings)
    line = str(raised.value)
    assert line.startswith(f"invalid setting {env}: ") and says in line
    assert "\n" not in line and "pydantic" not in line


def test_identity_names_its_prefixed_variable_and_the_plan_at_fault(monkeypatch):
    from services.identity.settings import IdentitySettings

    monkeypatch.setenv("IDENTITY_PBKDF2_ITERATIONS", "5")
    with pytest.raises(
        InvalidSettings, match="^invalid setting IDENTITY_PBKDF2_ITERATIONS: .*200000"
    ):
        load_settings(IdentitySettings)
    monkeypatch.delenv("IDENTITY_PBKDF2_ITERATIONS")
    monkeypatch.setenv("IDENTITY_PLANS", '{"free": {"amount": 0}, "pro": {"amount": -1}}')
    with pytest.raises(InvalidSettings, match=r"^invalid setting IDENTITY_PLANS\[pro\]\[amount\]"):
        load_settings(IdentitySettings)
    monkeypatch.setenv("IDENTITY_PLANS", '{"free": ')
    with pytest.raises(InvalidSettings, match="^invalid setting IDENTITY_PLANS: not valid JSON"):
        load_settings(IdentitySettings)


class _Secretive(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMTEST_")
    api_token: str = ""

    @field_validator("api_token")
    @classmethod
    def _long(cls, value: str) -> str:
        raise ValueError(f"{value!r} is too short")


def test_a_wrong_secret_setting_is_named_but_never_echoed(monkeypatch):
    monkeypatch.setenv("LMTEST_API_TOKEN", "hunter2")
    with pytest.raises(InvalidSettings) as raised:
        load_settings(_Secretive)
    assert str(raised.value) == "invalid setting LMTEST_API_TOKEN: '***' is too short"


def test_wrong_oauth_providers_are_refused_with_the_settings_naming_the_provider(monkeypatch):
    from services.vault.settings import VaultSettings

    entry = {"authorize_url": "http://auth.example/a", "token_url": "https://t.example/t"}
    monkeypatch.setenv("VAULT_OAUTH_PROVIDERS", json.dumps({"crm": {**entry, "client_id": "c"}}))
    with pytest.raises(InvalidSettings) as raised:
        load_settings(VaultSettings)
    assert str(raised.value) == (
        "invalid setting VAULT_OAUTH_PROVIDERS[crm] is not valid: authorize_url: provider "
        "endpoints must be https:// (http only on loopback)"
    )
    entry["authorize_url"] = "https://auth.example/a"
    given = {"crm": {**entry, "client_id": "c", "client_secret": "canary-secret"}}
    monkeypatch.setenv("VAULT_OAUTH_PROVIDERS", json.dumps(given))
    assert load_settings(VaultSettings).oauth_providers is not None
    monkeypatch.setenv("VAULT_PRODUCTION", "1")
    with pytest.raises(InvalidSettings, match="production mode") as raised:
        load_settings(VaultSettings)
    assert "canary" not in str(raised.value)
