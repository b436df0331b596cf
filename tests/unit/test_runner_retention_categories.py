"""Every place the runner keeps data is in exactly one retention category: a table added to
tables.py without one fails here."""

from __future__ import annotations

from collections import Counter

import pytest

from services.kit.retention import ColumnCategory, TableCategory
from services.runner.retention import BY_CONNECTION, categories
from services.runner.settings import RunnerSettings
from services.runner.tables import metadata

# Tables deliberately in no category, each with its reason. None so far.
EXEMPT: dict[str, str] = {}


@pytest.fixture
def declared():
    return categories(RunnerSettings(_env_file=None))


def test_every_table_is_in_exactly_one_category(declared):
    tables = Counter(c.table.name for c in declared if isinstance(c, TableCategory))
    assert {name for name, count in tables.items() if count > 1} == set()
    missing = set(metadata.tables) - set(tables) - set(EXEMPT)
    assert missing == set(), f"tables without a retention category: {sorted(missing)}"
    assert set(tables) <= set(metadata.tables)
    assert set(EXEMPT).isdisjoint(tables)


def test_column_categories_name_real_columns_of_categorised_tables(declared):
    whole = {c.table.name for c in declared if isinstance(c, TableCategory)}
    columns = Counter(
        place for c in declared if isinstance(c, ColumnCategory) for place in c.places
    )
    assert all(count == 1 for count in columns.values())
    for category in declared:
        if isinstance(category, ColumnCategory):
            table = metadata.tables[category.table.name]
            assert category.table.name in whole
            assert {*category.columns, category.purge_time_column, category.time_column} <= set(
                table.c.keys()
            )


def test_every_table_with_a_user_is_erased_and_the_rest_go_by_connection(declared):
    for category in declared:
        if not isinstance(category, TableCategory):
            continue
        if "user_id" in category.table.c:
            assert category.user_column == "user_id", category.name
        else:
            assert category.table.name in {t.name for _, t in BY_CONNECTION}, category.name
            assert "connection_id" in category.table.c


def test_max_ages_follow_the_settings():
    settings = RunnerSettings(
        _env_file=None, webhook_log_days=3, activity_days=40, execution_details_days=5,
        notification_days=2, idempotency_hours=12, webhook_signature_days=0,
    )  # fmt: skip
    ages = {c.name: c.max_age for c in categories(settings)}
    assert ages["webhooks_log"].days == 3
    assert ages["activity"].days == 40
    assert ages["execution_details"].days == ages["attempt_details"].days == 5
    assert ages["notifications"].days == 2
    assert ages["idempotency_keys"].total_seconds() == 12 * 3600
    assert ages["webhook_signatures"].total_seconds() == 0
    assert ages["connections"] is ages["failure_mails"] is ages["suspensions"] is None


def test_details_never_outlive_their_run():
    with pytest.raises(ValueError, match="execution_details_days"):
        RunnerSettings(_env_file=None, activity_days=5, execution_details_days=7)


def test_a_new_table_without_a_category_is_caught(declared):
    from sqlalchemy import Column, MetaData, String, Table

    scratch = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(scratch)
    Table("new_table", scratch, Column("id", String(36), primary_key=True))
    tables = {c.table.name for c in declared if isinstance(c, TableCategory)}
    assert set(scratch.tables) - tables - set(EXEMPT) == {"new_table"}
