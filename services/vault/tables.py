"""Vault's tables. Secret material exists here only as AES-GCM ciphertext; data keys only wrapped.

Retention (retention.py): credentials, data keys and owner keys until erasure (a key erased is
every copy of the user's secrets, or execution data, shredded), the audit log 90 days, OAuth states
and leases a day after expiry; day keys until their day passes the max age of the category they
protect (DestroyExpiredEpochKeys, execution_keys.py).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
)

from services.kit.db import Serial, Time, service_metadata

metadata = service_metadata()


# One random AES-256 data key per user, stored only wrapped by a KEK version.
user_keys = Table(
    "user_keys",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("kek_version", String(32), nullable=False, index=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    # Bumped when the user's data key is replaced and their secrets re-encrypted.
    Column("generation", Integer, nullable=False),
    Column("create_time", Time, nullable=False),
    Column("rotate_time", Time, nullable=True),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    # api_key, login, oauth2
    Column("kind", String(16), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("hint", String(200), nullable=False),
    # active, needs_reconnect
    Column("status", String(20), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("expire_time", Time, nullable=True),
    # AES-256-GCM under the user's data key: nonce ‖ ciphertext ‖ tag.
    Column("secret", LargeBinary, nullable=False),
    Column("key_generation", Integer, nullable=False),
    Column("format_version", Integer, nullable=False),
    # oauth2: SHA-256 of the current access token, to tell whether a rejected one was replaced.
    Column("token_sha256", String(64), nullable=True),
    Column("create_time", Time, nullable=False),
    Column("update_time", Time, nullable=False),
    Column("last_use_time", Time, nullable=True),
    Index("ix_credentials_user_id_create_time", "user_id", "create_time"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("event_time", Time, nullable=False, index=True),
    # The mesh name of the caller (gateway, runner, retention, operator).
    Column("caller", String(32), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("credential_id", String(36), nullable=True),
    Column("connection_id", String(64), nullable=True),
    # create, resolve, refresh, update, delete, shred, rotate_user_key
    Column("action", String(24), nullable=False),
    # ok, or the reason it failed
    Column("outcome", String(48), nullable=False),
    Index("ix_audit_events_user_id_id", "user_id", "id"),
)

oauth_states = Table(
    "oauth_states",
    metadata,
    Column("state_sha256", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("session_sha256", String(64), nullable=False),
    Column("provider", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    # Reconnecting: the oauth2 credential whose tokens the flow replaces; NULL makes a new one.
    Column("credential_id", String(36), nullable=True),
    # The PKCE code verifier, sealed under the user's data key.
    Column("verifier", LargeBinary, nullable=False),
    Column("expire_time", Time, nullable=False, index=True),
    Column("use_time", Time, nullable=True),
)

# Without Redis: who is refreshing which credential, so processes take turns.
leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expire_time", Time, nullable=False, index=True),
)

# Production mode: OAuth client secrets, sealed under the data key of the "system" owner.
oauth_client_secrets = Table(
    "oauth_client_secrets",
    metadata,
    Column("provider", String(100), primary_key=True),
    Column("secret", LargeBinary, nullable=False),
    Column("update_time", Time, nullable=False),
)

# Users whose account deletion was requested (SuspendUser, or reconciled from identity's record):
# their credentials are never resolved or refreshed again. Ids only; kept until erasure.
suspended_users = Table(
    "suspended_users",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("suspend_time", Time, nullable=False),
)


# Execution data sealed at rest (execution_keys.py): each value's key is derived from the owner's
# key and its category's key of its UTC day, both random and stored only wrapped by a KEK version.
# One owner key per user: a sibling of the data key (not it: RotateUserDataKey replaces that one),
# destroyed with it at erasure.
owner_keys = Table(
    "owner_keys",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("kek_version", String(32), nullable=False, index=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("create_time", Time, nullable=False),
)

# One key per (participant, category, UTC day "YYYY-MM-DD"), of no user: destroyed once the day
# has passed the category's max age, so every copy of what it sealed is noise.
epoch_keys = Table(
    "epoch_keys",
    metadata,
    # The mesh name of the service whose category it is (runner, identity).
    Column("participant", String(32), primary_key=True),
    Column("category", String(64), primary_key=True),
    Column("day", String(10), primary_key=True),
    Column("kek_version", String(32), nullable=False, index=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("create_time", Time, nullable=False),
)

# Per (participant, category): every day before `destroyed_before` is destroyed and never made
# again. The row exists from the category's first key on (its lock orders a key's creation
# against a destruction on PostgreSQL); `destroyed_before` only moves forward.
epoch_horizons = Table(
    "epoch_horizons",
    metadata,
    Column("participant", String(32), primary_key=True),
    Column("category", String(64), primary_key=True),
    Column("destroyed_before", String(10), nullable=True),
    Column("update_time", Time, nullable=False),
)
