"""Identity: accounts, passwords, sessions, login history, consents, plans and accounting,
password resets and deletion requests. Served over gRPC (`protos/leadmesh/identity/v1`)."""

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
