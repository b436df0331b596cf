"""Identity's tables (SQLAlchemy Core). Migrations in `migrations/` create exactly these; a test
compares the two.

Personal data and its categories (retention.py): accounts (until erasure), sessions, reset and
cancel tokens (1 day after their end), login attempts with IP addresses and user agents, sealed
(90 days), consent events (with the account), accounting records (10 years, detached from an
erased account). Each purge picks its rows on an index of its time column.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from services.kit.db import Serial, Time, service_metadata

metadata = service_metadata()


accounts = Table(
    "accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("email", String(320), nullable=False),
    # casefold()ed: one account per address whatever its letter case.
    Column("email_key", String(320), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("plan", String(64), nullable=False),
    Column("billing_name", String(200), nullable=True),
    Column("billing_address", JSON, nullable=True),
    # "active" or "disabled" (deletion requested).
    Column("status", String(16), nullable=False),
    Column("create_time", Time, nullable=False),
    Column("update_time", Time, nullable=False),
    Column("deletion_request_time", Time, nullable=True),
    # Services page through deletion requests (ListDeletionRequests) every half minute.
    Index("ix_accounts_deletion_request_time", "deletion_request_time"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "account_id",
        String(36),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # SHA-256 of the bearer token, hex; the token itself is never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("create_time", Time, nullable=False),
    Column("last_use_time", Time, nullable=False),
    # The session's end: the rolling idle deadline (never past absolute_expire_time), moved back
    # to the revocation time when it is revoked; retention purges by it.
    Column("expire_time", Time, nullable=False, index=True),
    Column("absolute_expire_time", Time, nullable=False),
    Column("revoke_time", Time, nullable=True),
    Column("ip_address", String(64), nullable=False),
    Column("user_agent", String(512), nullable=False),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("account_id", String(36), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("attempt_time", Time, nullable=False),
    # Sealed (login_history.py: at most 64 and 512 characters before, longer once sealed); NULL
    # when the attempt was recorded while no key could be had (never in plaintext).
    Column("ip_address", Text, nullable=True),
    Column("user_agent", Text, nullable=True),
    # success, bad_password, throttled, disabled
    Column("outcome", String(16), nullable=False),
    Index("ix_login_attempts_account_id_id", "account_id", "id"),
    Index("ix_login_attempts_attempt_time", "attempt_time"),
)

consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("account_id", String(36), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("event_time", Time, nullable=False),
    # signup, settings, unsubscribe
    Column("source", String(16), nullable=False),
    Index("ix_consent_events_account_id_purpose", "account_id", "purpose"),
)

reset_tokens = Table(
    "reset_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "account_id",
        String(36),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("create_time", Time, nullable=False),
    Column("expire_time", Time, nullable=False, index=True),
    Column("use_time", Time, nullable=True),
)

# The single-use cancel links of deletion confirmations (SHA-256 only), valid until the grace
# period ends.
deletion_cancel_tokens = Table(
    "deletion_cancel_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column(
        "account_id",
        String(36),
        ForeignKey("accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("create_time", Time, nullable=False),
    Column("expire_time", Time, nullable=False, index=True),
    Column("use_time", Time, nullable=True),
)

accounting_records = Table(
    "accounting_records",
    metadata,
    Column("id", String(36), primary_key=True),
    # Kept for 10 years (commercial law); detached (NULL) when the account is erased.
    Column(
        "account_id",
        String(36),
        ForeignKey("accounts.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    Column("plan", String(64), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("billing_name", String(200), nullable=False),
    Column("billing_address", JSON, nullable=False),
    Column("payment_reference", String(200), nullable=False),
    Column("record_time", Time, nullable=False, index=True),
)
