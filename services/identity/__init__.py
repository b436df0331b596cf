"""Identity: accounts, sessions and login history, password changes and resets, deletion
requests, consents, plans and accounting. Served over gRPC (`protos/leadmesh/identity/v1`)."""

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
