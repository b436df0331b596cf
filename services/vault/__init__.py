"""Vault: third-party secrets under envelope encryption (AES-256-GCM), key rotation, OAuth 2,
crypto-shredding and an audit log. Served over gRPC (`protos/leadmesh/vault/v1`)."""

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
