"""Identity as a retention participant: its categories, each max age a setting
(`IDENTITY_*`, settings.py), and the erasure of an account.

Every table of tables.py is in exactly one category (a unit test holds it). Categories are
declared children first and `account` last: an erasure deletes in this order, so every foreign
key holds at each step, and accounting records are detached (their account id set to NULL)
before the account row goes. An account is erased only once its deletion was requested: a
cancelled request (or none) refuses the erasure, so a late retention step never erases an
account its owner kept.
"""

from __future__ import annotations

from datetime import timedelta

from services.identity.login_history import CATEGORY as LOGIN_HISTORY
from services.identity.login_history import SEALED as LOGIN_HISTORY_SEALED
from services.identity.settings import IdentitySettings
from services.identity.store import Store
from services.identity.tables import (
    accounting_records,
    accounts,
    consent_events,
    deletion_cancel_tokens,
    login_attempts,
    reset_tokens,
    sessions,
)
from services.identity.throttle import LoginThrottle
from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition
from services.kit.retention import (
    KEPT_UNTIL_ERASURE,
    Category,
    FileCategory,
    Participant,
    TableCategory,
    days,
)
from services.kit.sealing import ExecutionKeys

CONTRACT = "GDPR Art. 6(1)(b): needed to provide the account the user signed up for"
SECURITY = "GDPR Art. 6(1)(f): securing accounts against abuse (legitimate interest)"
ACCOUNTING = (
    "GDPR Art. 6(1)(c): legal obligation to keep accounting records for 10 years "
    "(commercial and tax law: HGB §257, AO §147)"
)
TOKENS = ("token_hash",)


def accounting_age(years: int) -> timedelta:
    """Years as days, never short: ten calendar years hold at most three leap days."""
    return timedelta(days=365 * years + (years + 3) // 4)


def categories(settings: IdentitySettings) -> list[Category]:
    """Identity's categories, children before `account` (the order of an erasure)."""
    return [
        TableCategory(
            "consents", "consent events (purpose, granted or withdrawn, when, from where)",
            f"GDPR Art. 7(1): proof of consent; {KEPT_UNTIL_ERASURE}", consent_events, None,
            time_column="event_time", user_column="account_id", export_section="consents",
        ),
        # Not sealed: a session's age runs from its rolling expire_time, which fits no day key
        # (a key destroyed by day would take live sessions' values with it).
        TableCategory(
            "sessions", "sessions with IP address and user agent; a dead one (expired or "
            "revoked) is kept this long after its end", SECURITY, sessions,
            days(settings.expired_session_days), time_column="expire_time",
            user_column="account_id", export_section="sessions", secret_columns=TOKENS,
        ),
        TableCategory(
            "reset_tokens", "password reset links (SHA-256 only), kept this long after expiry",
            SECURITY, reset_tokens, days(settings.expired_reset_token_days),
            time_column="expire_time", user_column="account_id",
            export_section="password_resets", secret_columns=TOKENS,
        ),
        TableCategory(
            "deletion_cancel_tokens", "deletion cancel links (SHA-256 only), kept this long "
            "after the grace period ends", CONTRACT, deletion_cancel_tokens,
            days(settings.expired_cancel_token_days), time_column="expire_time",
            user_column="account_id", export_section="deletion_requests", secret_columns=TOKENS,
        ),
        TableCategory(
            LOGIN_HISTORY, "login attempts with IP address, user agent (both sealed) and "
            "outcome", SECURITY, login_attempts, days(settings.login_history_days),
            time_column="attempt_time", user_column="account_id", export_section="login_history",
            sealed=LOGIN_HISTORY_SEALED,
        ),
        TableCategory(
            "accounting_records", "plan changes with billing name, address and payment "
            "reference; detached from an erased account", ACCOUNTING, accounting_records,
            accounting_age(settings.accounting_record_years), time_column="record_time",
            user_column="account_id", keep_on_erase=ACCOUNTING,
            export_section="accounting_records",
        ),
        TableCategory(
            "account", "the account: e-mail address, password hash, plan, billing details",
            f"{CONTRACT}; {KEPT_UNTIL_ERASURE}", accounts, None, time_column="create_time",
            user_column="id", export_section="account", secret_columns=("password_hash",),
        ),
        FileCategory(
            "outbox", "mail written to var/outbox/ when no SMTP server is set (addresses, "
            "reset and cancel links)", CONTRACT, settings.outbox_dir,
            days(settings.outbox_days), "*.eml",
        ),
    ]  # fmt: skip


def participant(
    settings: IdentitySettings,
    store: Store,
    throttle: LoginThrottle,
    clock: Clock,
    keys: ExecutionKeys | None = None,
) -> Participant:
    """`keys`: the vault's keys of the sealed login history (its `Seal`, its export opened, the
    account's forgotten at its erasure)."""

    async def before_erase(account_id: str) -> None:
        async with store.read() as tx:
            account = await tx.account(account_id)
        if account is None:
            return  # erased already (or never was): the erasure is idempotent
        if account.deletion_request_time is None:
            raise FailedPrecondition(
                "DELETION_NOT_REQUESTED",
                "this account's deletion was not requested, or was cancelled",
            )
        # The login counters are keyed by a digest of the address: forgotten with it.
        await throttle.forgive(account.email_key)

    return Participant(
        "identity",
        store.database,
        categories(settings),
        clock,
        before_erase=before_erase,
        keys=keys,
    )
