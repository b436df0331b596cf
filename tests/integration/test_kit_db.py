"""The embedded store keeps what it accepted: every service's SQLite connection commits to disk
(WAL with synchronous=FULL), and writes queue rather than fail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import text

from services.kit.db import AUTOCHECKPOINT_PAGES, Database, create_service_engine, migrate

MIGRATIONS = Path(__file__).parents[2] / "services" / "runner" / "migrations"


async def test_sqlite_connections_are_durable_and_wait_for_each_other(tmp_path: Path):
    engine = create_service_engine(f"sqlite:///{tmp_path / 'svc' / 'svc.db'}")
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                for name in (
                    "journal_mode", "synchronous", "busy_timeout", "foreign_keys",
                    "secure_delete", "auto_vacuum",
                )
            }  # fmt: skip
    finally:
        await engine.dispose()
    # synchronous 2 = FULL: a commit is on disk before the caller hears of it, power loss included.
    # secure_delete: deleted rows are overwritten; auto_vacuum 2 = INCREMENTAL (retention).
    assert pragmas == {"journal_mode": "wal", "synchronous": 2, "busy_timeout": 10000,
                       "foreign_keys": 1, "secure_delete": 1, "auto_vacuum": 2}  # fmt: skip


def test_migrate_converts_a_file_made_without_incremental_vacuum(tmp_path: Path):
    """A database made before retention (auto_vacuum NONE) gives space back after a migration."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE filler (x TEXT)")
        old.executemany("INSERT INTO filler VALUES (?)", [("x" * 1000,)] * 200)
    assert sqlite3.connect(path).execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    migrate(f"sqlite:///{path}", MIGRATIONS)
    converted = sqlite3.connect(path)
    try:
        assert converted.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert converted.execute("SELECT count(*) FROM filler").fetchone()[0] == 200
    finally:
        converted.close()


async def test_a_sqlite_database_and_its_journals_are_private_under_the_usual_umask(tmp_path: Path):
    """0600 files in a 0700 directory even under the usual 022 umask (SQLite alone makes 0644),
    after a migration and writes from the service's engine; an older, readable file is tightened."""
    old_umask = os.umask(0o022)
    try:
        url = f"sqlite:///{tmp_path / 'runner' / 'runner.db'}"
        migrate(url, MIGRATIONS)
        engine = create_service_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE t (x INTEGER)"))
                await connection.execute(text("INSERT INTO t VALUES (1)"))
            files = sorted((tmp_path / "runner").iterdir())
            assert {p.name for p in files} == {"runner.db", "runner.db-wal", "runner.db-shm"}
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
            assert modes == dict.fromkeys(modes, 0o600)
        finally:
            await engine.dispose()
        assert stat.S_IMODE((tmp_path / "runner").stat().st_mode) == 0o700
        older = tmp_path / "older" / "older.db"
        older.parent.mkdir(mode=0o755)
        older.touch(mode=0o644)
        create_service_engine(f"sqlite:///{older}").sync_engine.dispose()
        assert stat.S_IMODE(older.stat().st_mode) == 0o600
        assert stat.S_IMODE(older.parent.stat().st_mode) == 0o700
    finally:
        os.umask(old_umask)


async def test_while_checkpoints_are_paused_commits_leave_the_log_to_whoever_paused_them(
    tmp_path: Path,
):
    """SQLite checkpoints inside the commit that makes its log long (the caller waits for the
    copy and its fsyncs); a purge pauses that for the service's writes and checkpoints itself,
    outside the writers' turn."""
    database = Database(create_service_engine(f"sqlite:///{tmp_path / 'svc' / 'svc.db'}"))
    page = "x" * 4000
    try:
        async with database.write() as connection:
            await connection.execute(text("CREATE TABLE t (x TEXT)"))
        async with database.checkpoints_paused():
            for _ in range(30):  # 30 commits of 100 pages: SQLite's own would checkpoint at 1000
                async with database.write() as connection:
                    paused = (await connection.execute(text("PRAGMA wal_autocheckpoint"))).scalar()
                    await connection.execute(text("INSERT INTO t VALUES (:x)"), [{"x": page}] * 100)
            log, done = await database.checkpoint()
        async with database.write() as connection:
            again = (await connection.execute(text("PRAGMA wal_autocheckpoint"))).scalar()
    finally:
        await database.dispose()
    assert paused == 0 and again == AUTOCHECKPOINT_PAGES == 1000
    assert log >= 3000 and done == log  # nothing checkpointed meanwhile; all of it now
