"""Each service's database: an async engine for the service, Alembic for its schema.

SQLite (the embedded default) gets WAL, a busy timeout and `BEGIN IMMEDIATE` so concurrent writers
queue instead of failing; any SQLAlchemy URL (PostgreSQL in production) works the same. Engines
never render bound parameters into errors or logs (`hide_parameters`): they may hold secrets.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, create_engine, event, make_url
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def _with_driver(url: str, drivers: dict[str, str]) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    return parsed.set(drivername=drivers.get(backend, parsed.drivername))


def create_service_engine(url: str) -> AsyncEngine:
    parsed = _with_driver(url, _ASYNC_DRIVERS)
    if parsed.get_backend_name() == "sqlite":
        _ensure_parent(parsed)
        engine = create_async_engine(parsed, hide_parameters=True)
        _tune_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(parsed, hide_parameters=True, pool_pre_ping=True, pool_size=10)


def create_sync_engine(url: str) -> Engine:
    parsed = _with_driver(url, _SYNC_DRIVERS)
    if parsed.get_backend_name() == "sqlite":
        _ensure_parent(parsed)
        engine = create_engine(parsed, hide_parameters=True)
        _tune_sqlite(engine)
        return engine
    return create_engine(parsed, hide_parameters=True)


def _ensure_parent(url: URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, open transactions (the driver's would be DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        # A deferred transaction that reads then writes fails with SQLITE_BUSY when another
        # writer got in between; taking the write lock up front makes writers wait instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def migrate(url: str, migrations: Path) -> None:
    """`alembic upgrade head` for one service's history."""
    engine = create_sync_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(migrations))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def run_alembic_env(target_metadata: MetaData) -> None:
    """The body of every service's `migrations/env.py` (online mode, connection given)."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("set sqlalchemy.url or run through services.kit.db.migrate")
        engine = create_sync_engine(url)
        with engine.begin() as connection:
            _configure_and_run(context, connection, target_metadata)
        return
    _configure_and_run(context, connection, target_metadata)


def _configure_and_run(context, connection, target_metadata: MetaData) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
