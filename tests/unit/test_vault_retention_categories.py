"""The vault's retention categories: every table in exactly one or exempt with a reason, each max
age its setting, no secret ever exported."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.kit.config import MeshSettings
from services.kit.retention import TableCategory
from services.vault import tables
from services.vault.retention import EXEMPT, categories
from services.vault.settings import VaultSettings


def settings(tmp_path: Path, **values) -> VaultSettings:
    mesh = MeshSettings(var_dir=tmp_path, _env_file=None)
    return VaultSettings(mesh=mesh, master_keys=None, oauth_providers=None, **values)


def test_every_table_is_in_exactly_one_category_or_exempt_with_a_reason(tmp_path: Path):
    declared = [c.table.name for c in categories(settings(tmp_path))]
    assert len(declared) == len(set(declared)), "a table in two categories"
    assert not set(declared) & set(EXEMPT), "a table both in a category and exempt"
    assert sorted([*declared, *EXEMPT]) == sorted(tables.metadata.tables), "a table of neither"
    assert all(len(reason) > 40 for reason in EXEMPT.values())


def test_each_max_age_is_its_setting(tmp_path: Path):
    chosen = settings(tmp_path, audit_log_days=30, expired_oauth_state_days=2, expired_lease_days=3)
    ages = {c.name: c.max_age for c in categories(chosen)}
    assert ages == {
        "credentials": None,
        "oauth_states": timedelta(days=2),
        "audit_log": timedelta(days=30),
        "refresh_leases": timedelta(days=3),
        "suspensions": None,
        "data_keys": None,
        "owner_keys": None,
    }
    assert {c.name: c.max_age for c in categories(settings(tmp_path))}["audit_log"] == timedelta(
        days=90
    )


def test_secrets_are_never_exported_and_every_users_row_is_erased(tmp_path: Path):
    declared = {c.name: c for c in categories(settings(tmp_path))}
    exported = {name for name, c in declared.items() if c.export_section}
    assert exported == {"credentials", "audit_log"}
    shown = {c.name for c in tables.credentials.columns} - set(
        declared["credentials"].secret_columns
    )
    assert shown == {
        "id", "name", "kind", "provider", "hint", "status", "scopes",
        "expire_time", "create_time", "update_time", "last_use_time",
    }  # fmt: skip
    erased = {n for n, c in declared.items() if isinstance(c, TableCategory) and c.user_column}
    assert erased == {
        "credentials", "oauth_states", "audit_log", "suspensions", "data_keys", "owner_keys",
    }  # fmt: skip
    assert not any(c.keep_on_erase for c in declared.values())
