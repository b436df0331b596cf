"""Identity's retention categories: every table in exactly one, each max age its setting, and an
erasure order in which every foreign key holds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.identity import tables
from services.identity.retention import ACCOUNTING, categories
from services.identity.settings import IdentitySettings
from services.kit.config import MeshSettings
from services.kit.retention import FileCategory, TableCategory


def settings(tmp_path: Path, **values) -> IdentitySettings:
    return IdentitySettings(mesh=MeshSettings(var_dir=tmp_path, _env_file=None), **values)


def test_every_table_is_in_exactly_one_category(tmp_path: Path):
    declared = [c.table.name for c in categories(settings(tmp_path)) if hasattr(c, "table")]
    assert sorted(declared) == sorted(tables.metadata.tables), "a table without a category"
    assert len(declared) == len(set(declared)), "a table in two categories"


def test_each_max_age_is_its_setting(tmp_path: Path):
    chosen = settings(
        tmp_path, login_history_days=30, expired_session_days=2, expired_reset_token_days=3,
        expired_cancel_token_days=4, accounting_record_years=11, outbox_days=5,
    )  # fmt: skip
    ages = {c.name: c.max_age for c in categories(chosen)}
    assert ages == {
        "consents": None,
        "sessions": timedelta(days=2),
        "reset_tokens": timedelta(days=3),
        "deletion_cancel_tokens": timedelta(days=4),
        "login_history": timedelta(days=30),
        "accounting_records": timedelta(days=11 * 365 + 3),
        "account": None,
        "outbox": timedelta(days=5),
    }
    defaults = {c.name: c.max_age for c in categories(settings(tmp_path))}
    assert defaults["login_history"] == timedelta(days=90)
    assert defaults["sessions"] == defaults["reset_tokens"] == timedelta(days=1)
    assert defaults["outbox"] == timedelta(days=7)
    # Ten years are never cut short, whichever years they span (at most 3 leap days).
    assert defaults["accounting_records"] == timedelta(days=3653)


def test_an_erasure_deletes_children_first_and_keeps_accounting_records_detached(tmp_path: Path):
    declared = categories(settings(tmp_path))
    order = [c.table.name for c in declared if isinstance(c, TableCategory)]
    for table in tables.metadata.sorted_tables:
        for key in table.foreign_keys:
            assert order.index(table.name) < order.index(key.column.table.name), table.name
    assert order[-1] == "accounts"
    by_name = {c.name: c for c in declared}
    kept = [c.name for c in declared if isinstance(c, TableCategory) and c.keep_on_erase]
    assert kept == ["accounting_records"]
    assert "HGB" in ACCOUNTING and "AO" in ACCOUNTING and "10 years" in ACCOUNTING
    assert by_name["accounting_records"].user_column == "account_id"
    # Every category of an account's rows is erased with it (or, above, kept detached).
    for category in declared:
        if isinstance(category, TableCategory):
            assert category.user_column is not None, category.name
    assert by_name["account"].secret_columns == ("password_hash",)
    for name in ("sessions", "reset_tokens", "deletion_cancel_tokens"):
        assert "token_hash" in by_name[name].secret_columns


def test_the_outbox_is_a_category_of_eml_files(tmp_path: Path):
    (outbox,) = [c for c in categories(settings(tmp_path)) if isinstance(c, FileCategory)]
    assert (outbox.name, outbox.directory, outbox.pattern) == (
        "outbox",
        tmp_path / "outbox",
        "*.eml",
    )


def test_the_grace_period_ends_a_margin_before_the_erase_deadline(tmp_path: Path):
    assert settings(tmp_path).deletion_grace_days == 14
    assert settings(tmp_path, deletion_grace_days=53).deletion_grace_days == 53
    assert settings(tmp_path, erase_after_days=7, deletion_grace_days=0).deletion_grace_days == 0
    with pytest.raises(ValidationError, match="at most erase_after_days - 7"):
        settings(tmp_path, deletion_grace_days=54)
    with pytest.raises(ValidationError):
        settings(tmp_path, erase_after_days=20)  # the default 14 days leave no margin
