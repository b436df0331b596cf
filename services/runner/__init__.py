"""Runner: connections (trigger → mapped HTTP action with a vault credential), webhook ingest, a
durable at-least-once queue of runs, delivery workers, and the logs the owner reads. Served over
gRPC (`protos/leadmesh/runner/v1`)."""

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
