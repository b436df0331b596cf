"""Retention: every participant's purges on a schedule, the purge ledger, compliance, and erasure
cases ending in a certificate. Served over gRPC (`protos/leadmesh/retention/v1`)."""

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
