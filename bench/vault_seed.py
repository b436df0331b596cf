"""Data keys seeded straight into a stopped vault's table, for the KEK rotation of bench/vault.py:
the one module outside the vault that touches its internals (its key ring and its table).

Why not the vault's contract: the rotation measured needs `count` users' data keys wrapped by the
vault's own KEK, and only the vault's key ring can wrap them. Through `CreateCredential` that is
`count` RPCs, each committing a data key, a credential and an audit event before it returns:
minutes of set-up for 100 000 keys, leaving 100 000 credentials and events the rotation never
reads. Written here before the vault process starts, nothing that is measured goes around the
contract. Nothing but bench/vault.py may import this module, and it must never write to a vault
that is running (the import-linter contract "Benchmarks measure services through their contracts"
in pyproject.toml allows these imports here only).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from services.kit.db import create_sync_engine
from services.vault.keys import KeyRing, new_data_key
from services.vault.tables import user_keys


def seed_data_keys(var: Path, database_url: str, count: int) -> None:
    """`count` users' data keys, wrapped by the vault's v1 KEK, inserted in one transaction."""
    ring = KeyRing.from_setting(None, var / "vault")
    now = datetime.now(UTC)
    rows = []
    for n in range(count):
        version, wrapped = ring.wrap(f"seeded-{n}", new_data_key())
        rows.append(
            {
                "user_id": f"seeded-{n}",
                "kek_version": version,
                "wrapped_key": wrapped,
                "generation": 1,
                "create_time": now,
            }
        )
    engine = create_sync_engine(database_url)
    with engine.begin() as connection:
        connection.execute(user_keys.insert(), rows)
    # Into the database file, as a vault's own writes are (SQLite checkpoints as it goes): one
    # bulk insert otherwise leaves a WAL of tens of megabytes behind for the vault to fold in.
    raw = engine.raw_connection()  # outside a transaction, where a checkpoint can run
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    engine.dispose()
