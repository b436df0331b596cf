"""The embedded store keeps what it accepted: every service's SQLite connection commits to disk
(WAL with synchronous=FULL), and writes queue rather than fail."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from services.kit.db import create_service_engine


async def test_sqlite_connections_are_durable_and_wait_for_each_other(tmp_path: Path):
    engine = create_service_engine(f"sqlite:///{tmp_path / 'svc' / 'svc.db'}")
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
    finally:
        await engine.dispose()
    # synchronous 2 = FULL: a commit is on disk before the caller hears of it, power loss included.
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 10000,
                       "foreign_keys": 1}  # fmt: skip
