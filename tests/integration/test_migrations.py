"""Every service's migration history creates exactly the tables its code declares, on SQLite and
on PostgreSQL."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cli.mesh import PROCESSES
from services.kit.db import create_sync_engine, migrate

SERVICES = [p for p in PROCESSES if p.migrations is not None]


@pytest.mark.parametrize("process", SERVICES, ids=[p.name for p in SERVICES])
def test_migrations_create_exactly_the_declared_tables(process, database_url: str):
    migrate(database_url, process.migrations)
    tables = importlib.import_module(f"{process.module}.tables")
    engine = create_sync_engine(database_url)
    try:
        with engine.connect() as connection:
            # A dialect's own shape of the same tables (the runner's partitions on PostgreSQL).
            differs = getattr(tables, "postgresql_only", None)
            opts = {"include_object": differs(engine.dialect.name)} if differs else {}
            context = MigrationContext.configure(connection, opts=opts)
            diff = compare_metadata(context, tables.metadata)
    finally:
        engine.dispose()
    assert diff == []
