"""Every table of the retention service is in exactly one of its categories, or exempt for a
stated reason: a table added without either fails here."""

from __future__ import annotations

from pathlib import Path

from services.kit.config import MeshSettings
from services.retention.participants import own_categories
from services.retention.settings import RetentionSettings
from services.retention.tables import EXEMPT, metadata


def _settings() -> RetentionSettings:
    return RetentionSettings(mesh=MeshSettings(var_dir=Path("var"), _env_file=None))


def test_every_table_is_in_one_category_or_exempt():
    categories = own_categories(_settings())
    covered = [c.table.name for c in categories if hasattr(c, "table")]
    assert len(covered) == len(set(covered)), "a table is in two categories"
    assert not set(covered) & set(EXEMPT), "an exempt table is also in a category"
    assert set(metadata.tables) == set(covered) | set(EXEMPT)
    assert all(reason for reason in EXEMPT.values())


def test_max_ages_are_settings_with_the_designed_defaults():
    ages = {c.name: c.max_age.days for c in own_categories(_settings())}
    assert ages == {"purge_ledger": 365, "erasure_certificates": 3 * 365, "traces": 7}
    shorter = RetentionSettings(
        mesh=MeshSettings(var_dir=Path("var"), _env_file=None), ledger_days=30, traces_days=3
    )
    ages = {c.name: c.max_age.days for c in own_categories(shorter)}
    assert ages["purge_ledger"] == 30 and ages["traces"] == 3


def test_traces_are_the_mesh_trace_directory():
    [traces] = [c for c in own_categories(_settings()) if c.name == "traces"]
    assert traces.directory == Path("var") / "traces"
