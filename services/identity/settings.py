"""Identity's settings (`IDENTITY_*`), read once at start-up. Every limit the privacy policy or
NIST SP 800-63B names is here, not buried in code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.config import MeshSettings

# The privacy policy promises at least this many PBKDF2 iterations; the setting may only go up.
MIN_PBKDF2_ITERATIONS = 200_000
# Days between the end of the grace period and the erase deadline, at least: retention flags a
# case at risk 7 days before its deadline, so its execution (retried while a participant is
# down) has at least that long.
ERASURE_MARGIN_DAYS = 7


class Plan(BaseModel):
    # Price per billing period in the currency's minor unit (cents).
    amount: Annotated[int, Field(ge=0)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"


DEFAULT_PLANS = {
    "free": Plan(amount=0),
    "pro": Plan(amount=2900),
    "business": Plan(amount=9900),
}


class IdentitySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore", frozen=True)

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    database_url: SecretStr | None = None

    # Passwords: PBKDF2-HMAC-SHA512 (OWASP Password Storage Cheat Sheet: 210 000).
    pbkdf2_iterations: int = 210_000
    # Threads hashing passwords; hashlib releases the GIL, so one per core uses every core.
    hash_threads: Annotated[int, Field(ge=1)] = os.cpu_count() or 1
    # Niceness of those threads (Linux): the event loop serving other requests goes first.
    hash_nice: Annotated[int, Field(ge=0, le=19)] = 10

    # Sessions: rolling idle timeout and absolute lifetime (NIST SP 800-63B: 30 days at most).
    session_idle_seconds: Annotated[int, Field(ge=60)] = 7 * 86400
    session_absolute_seconds: Annotated[int, Field(ge=60, le=30 * 86400)] = 30 * 86400

    # Brute force. One account from one address: this many failures within the window.
    lockout_window_seconds: Annotated[int, Field(ge=1)] = 15 * 60
    lockout_account_ip_limit: Annotated[int, Field(ge=1)] = 10
    # One address failing across accounts, within the same window.
    lockout_ip_limit: Annotated[int, Field(ge=1)] = 100
    # Consecutive failures of one account from anywhere (NIST SP 800-63B: at most 100); past it,
    # attempts from addresses that never signed in to the account wait an exponential backoff.
    lockout_account_limit: Annotated[int, Field(ge=1, le=100)] = 100
    lockout_backoff_cap_seconds: Annotated[int, Field(ge=1)] = 3600
    # How long after its last failure a consecutive-failure count is forgotten.
    lockout_account_memory_seconds: Annotated[int, Field(ge=60)] = 86400

    # Password reset links: single use, valid this long; at most this many mails per address
    # and hour (the rest are dropped silently, so the answer never differs).
    reset_token_seconds: Annotated[int, Field(ge=60)] = 3600
    reset_mails_per_hour: Annotated[int, Field(ge=1)] = 5

    # A deleted account is irrevocably removed within this many days (privacy policy: 60).
    erase_after_days: Annotated[int, Field(ge=1, le=60)] = 60
    # The deletion confirmation's cancel link works this long after the request, and retention
    # erases nothing before; 0: no cancel link. At most erase_after_days - ERASURE_MARGIN_DAYS.
    deletion_grace_days: Annotated[int, Field(ge=0)] = 14

    # Retention categories (services/identity/retention.py; DESIGN "Data and retention"): login
    # history (IP addresses) this many days after the attempt; dead sessions (expired or revoked),
    # reset links and cancel links this many days after their end; accounting records this many
    # years (commercial and tax law); mail in var/outbox/ this many days.
    login_history_days: Annotated[int, Field(ge=1)] = 90
    expired_session_days: Annotated[int, Field(ge=0)] = 1
    expired_reset_token_days: Annotated[int, Field(ge=0)] = 1
    expired_cancel_token_days: Annotated[int, Field(ge=0)] = 1
    accounting_record_years: Annotated[int, Field(ge=1)] = 10
    outbox_days: Annotated[int, Field(ge=1)] = 7

    # Login history IP addresses and user agents sealed at rest under the vault's day keys of
    # `login_history` (services/identity/login_history.py): when a day passes its max age, or the
    # account is erased, every copy of them (backups included) is unreadable.
    seal_login_history: bool = True
    # How long a key from the vault stays in this process's memory, at most (never on disk).
    execution_key_cache_seconds: Annotated[float, Field(ge=0)] = 600.0

    plans: dict[str, Plan] = Field(default_factory=lambda: dict(DEFAULT_PLANS))

    # Key of the HMAC in unsubscribe links; generated under var/identity/ when not given.
    unsubscribe_secret: SecretStr | None = None
    mail_from: str = "leadmesh <no-reply@leadmesh.localhost>"
    # SMTP when set (smtp://[user:pass@]host:port, smtps:// for implicit TLS); else var/outbox/.
    smtp_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices("SMTP_URL", "IDENTITY_SMTP_URL")
    )

    @field_validator("pbkdf2_iterations")
    @classmethod
    def _at_least_the_promise(cls, value: int) -> int:
        if value < MIN_PBKDF2_ITERATIONS:
            raise ValueError(
                f"the privacy policy promises at least {MIN_PBKDF2_ITERATIONS} iterations"
            )
        return value

    @field_validator("plans")
    @classmethod
    def _free_plan_exists(cls, value: dict[str, Plan]) -> dict[str, Plan]:
        if "free" not in value or value["free"].amount != 0:
            raise ValueError('plans must include "free" at amount 0')
        return value

    @model_validator(mode="after")
    def _grace_ends_before_the_deadline(self) -> IdentitySettings:
        latest = self.erase_after_days - ERASURE_MARGIN_DAYS
        if self.deletion_grace_days > max(latest, 0):
            raise ValueError(
                f"deletion_grace_days is at most erase_after_days - {ERASURE_MARGIN_DAYS} "
                f"({max(latest, 0)}): retention needs that long to erase before the deadline"
            )
        return self

    @property
    def var_dir(self) -> Path:
        return self.mesh.var_dir / "identity"

    @property
    def outbox_dir(self) -> Path:
        return self.mesh.var_dir / "outbox"
