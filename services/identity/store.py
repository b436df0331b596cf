"""Identity's persistence: every query the service makes, each inside a transaction it is given.

`Store.begin()` opens one transaction and hands out a `Tx`; a use case that changes several rows
(a password reset: use the token, set the hash, revoke the sessions) does it in one `Tx`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.identity.tables import (
    accounting_records,
    accounts,
    consent_events,
    deletion_cancel_tokens,
    login_attempts,
    reset_tokens,
    sessions,
)
from services.kit.clock import as_utc
from services.kit.db import Store as KitStore


class EmailTaken(Exception):
    pass


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    email_key: str
    password_hash: str
    plan: str
    billing_name: str | None
    billing_address: dict[str, str] | None
    status: str
    create_time: datetime
    update_time: datetime
    deletion_request_time: datetime | None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class Session:
    id: str
    account_id: str
    create_time: datetime
    last_use_time: datetime
    expire_time: datetime
    absolute_expire_time: datetime
    revoke_time: datetime | None
    ip_address: str
    user_agent: str


@dataclass(frozen=True)
class LoginAttempt:
    """As stored, the address and user agent are sealed (login_history.py), or None when the
    attempt was recorded without them; opened, they are text ("" when purged or not recorded)."""

    id: int
    attempt_time: datetime
    ip_address: str | None
    user_agent: str | None
    outcome: str
    # Opened: the values' key was destroyed (the day expired, the account erased) or they do not
    # authenticate: they read as purged.
    purged: bool = False


@dataclass(frozen=True)
class ConsentEvent:
    purpose: str
    granted: bool
    event_time: datetime
    source: str


def _build(cls, row) -> Any:
    values = {
        key: as_utc(value) if isinstance(value, datetime) else value
        for key, value in row._mapping.items()
        if key in cls.__dataclass_fields__
    }
    return cls(**values)


class Tx:
    def __init__(self, connection: AsyncConnection) -> None:
        self.c = connection

    # accounts
    async def create_account(self, values: dict[str, Any]) -> None:
        try:
            async with self.c.begin_nested():
                await self.c.execute(insert(accounts).values(**values))
        except IntegrityError:
            raise EmailTaken from None

    async def account(self, account_id: str, *, lock: bool = False) -> Account | None:
        """The account; with `lock`, its row is held until the transaction ends (PostgreSQL's
        FOR UPDATE; SQLite's write transactions hold the whole file already)."""
        query = select(accounts).where(accounts.c.id == account_id)
        row = (await self.c.execute(query.with_for_update() if lock else query)).first()
        return _build(Account, row) if row else None

    async def account_by_email(self, email_key: str) -> Account | None:
        query = select(accounts).where(accounts.c.email_key == email_key)
        row = (await self.c.execute(query)).first()
        return _build(Account, row) if row else None

    async def update_account(self, account_id: str, **values: Any) -> None:
        await self.c.execute(update(accounts).where(accounts.c.id == account_id).values(**values))

    async def consenting_accounts(self, purpose: str) -> list[tuple[str, str]]:
        """(id, email) of every active account whose latest event for `purpose` grants it."""
        latest = (
            select(consent_events.c.account_id, func.max(consent_events.c.id).label("last_id"))
            .where(consent_events.c.purpose == purpose)
            .group_by(consent_events.c.account_id)
            .subquery()
        )
        query = (
            select(accounts.c.id, accounts.c.email)
            .join(latest, latest.c.account_id == accounts.c.id)
            .join(consent_events, consent_events.c.id == latest.c.last_id)
            .where(consent_events.c.granted.is_(True), accounts.c.status == "active")
            .order_by(accounts.c.create_time)
        )
        return [(row.id, row.email) for row in await self.c.execute(query)]

    async def deletion_requests(
        self, after: tuple[datetime, str] | None, limit: int
    ) -> list[tuple[str, datetime]]:
        """(id, request time) of accounts whose deletion was requested, oldest request first,
        after the keyset cursor `after` (request time, id)."""
        requested = accounts.c.deletion_request_time
        query = select(accounts.c.id, requested).where(requested.is_not(None))
        if after is not None:
            query = query.where(
                or_(requested > after[0], and_(requested == after[0], accounts.c.id > after[1]))
            )
        rows = await self.c.execute(query.order_by(requested, accounts.c.id).limit(limit))
        return [(row.id, as_utc(row.deletion_request_time)) for row in rows]

    # sessions
    async def add_session(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(sessions).values(**values))

    async def session_by_token(self, token_hash: str) -> Session | None:
        query = select(sessions).where(sessions.c.token_hash == token_hash)
        row = (await self.c.execute(query)).first()
        return _build(Session, row) if row else None

    async def touch_session(self, session_id: str, last_use: datetime, expire: datetime) -> None:
        # Never a revoked one: a revocation that landed meanwhile keeps its end.
        await self.c.execute(
            update(sessions)
            .where(sessions.c.id == session_id, sessions.c.revoke_time.is_(None))
            .values(last_use_time=last_use, expire_time=expire)
        )

    @staticmethod
    def _revoked(now: datetime) -> dict[str, Any]:
        """A revoked session ends now: its expire_time (what retention purges by) moves back."""
        ended = case((sessions.c.expire_time > now, now), else_=sessions.c.expire_time)
        return {"revoke_time": now, "expire_time": ended}

    async def revoke_session_by_token(self, token_hash: str, now: datetime) -> None:
        await self.c.execute(
            update(sessions)
            .where(sessions.c.token_hash == token_hash, sessions.c.revoke_time.is_(None))
            .values(self._revoked(now))
        )

    async def revoke_sessions(self, account_id: str, now: datetime, keep: str = "") -> int:
        """Revokes every live session of the account except `keep`; returns how many."""
        result = await self.c.execute(
            update(sessions)
            .where(
                sessions.c.account_id == account_id,
                sessions.c.id != keep,
                sessions.c.revoke_time.is_(None),
                sessions.c.expire_time > now,
            )
            .values(self._revoked(now))
        )
        return result.rowcount

    async def live_sessions(self, account_id: str, now: datetime) -> list[Session]:
        query = (
            select(sessions)
            .where(
                sessions.c.account_id == account_id,
                sessions.c.revoke_time.is_(None),
                sessions.c.expire_time > now,
                sessions.c.absolute_expire_time > now,
            )
            .order_by(sessions.c.create_time.desc(), sessions.c.id)
        )
        return [_build(Session, row) for row in await self.c.execute(query)]

    # login history
    async def record_attempt(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(login_attempts).values(**values))

    async def attempts(
        self, account_id: str, before_id: int | None, limit: int
    ) -> list[LoginAttempt]:
        condition = login_attempts.c.account_id == account_id
        if before_id is not None:
            condition = and_(condition, login_attempts.c.id < before_id)
        query = (
            select(login_attempts)
            .where(condition)
            .order_by(login_attempts.c.id.desc())
            .limit(limit)
        )
        return [_build(LoginAttempt, row) for row in await self.c.execute(query)]

    async def latest_successes(self, account_id: str, limit: int) -> list[LoginAttempt]:
        query = (
            select(login_attempts)
            .where(login_attempts.c.account_id == account_id, login_attempts.c.outcome == "success")
            .order_by(login_attempts.c.id.desc())
            .limit(limit)
        )
        return [_build(LoginAttempt, row) for row in await self.c.execute(query)]

    async def signed_in_from(self, account_id: str, ip_address: str) -> bool:
        """Whether a successful attempt stored this address in plaintext (written before
        sealing, or with sealing off)."""
        query = select(login_attempts.c.id).where(
            login_attempts.c.account_id == account_id,
            login_attempts.c.ip_address == ip_address,
            login_attempts.c.outcome == "success",
        )
        return (await self.c.execute(query.limit(1))).first() is not None

    # consents
    async def consent_history(self, account_id: str) -> list[ConsentEvent]:
        query = (
            select(consent_events)
            .where(consent_events.c.account_id == account_id)
            .order_by(consent_events.c.id)
        )
        return [_build(ConsentEvent, row) for row in await self.c.execute(query)]

    async def add_consent_event(
        self, account_id: str, purpose: str, granted: bool, when: datetime, source: str
    ) -> None:
        await self.c.execute(
            insert(consent_events).values(
                account_id=account_id,
                purpose=purpose,
                granted=granted,
                event_time=when,
                source=source,
            )
        )

    # password resets
    async def add_reset_token(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(reset_tokens).values(**values))

    async def live_reset_token(self, token_hash: str, now: datetime) -> str | None:
        query = select(reset_tokens.c.account_id).where(
            reset_tokens.c.token_hash == token_hash,
            reset_tokens.c.use_time.is_(None),
            reset_tokens.c.expire_time > now,
        )
        row = (await self.c.execute(query)).first()
        return row.account_id if row else None

    async def use_reset_token(self, token_hash: str, now: datetime) -> str | None:
        return await self._use_token(reset_tokens, token_hash, now)

    async def _use_token(self, table: Table, token_hash: str, now: datetime) -> str | None:
        """Marks a live token used and returns its account id; None if unknown, used or expired.
        The conditional UPDATE makes a token usable once even under concurrent confirmations."""
        row = (
            await self.c.execute(select(table.c.account_id).where(table.c.token_hash == token_hash))
        ).first()
        if row is None:
            return None
        result = await self.c.execute(
            update(table)
            .where(
                table.c.token_hash == token_hash,
                table.c.use_time.is_(None),
                table.c.expire_time > now,
            )
            .values(use_time=now)
        )
        return row.account_id if result.rowcount == 1 else None

    async def void_reset_tokens(self, account_id: str, now: datetime) -> None:
        await self._void_tokens(reset_tokens, account_id, now)

    async def _void_tokens(self, table: Table, account_id: str, now: datetime) -> None:
        await self.c.execute(
            update(table)
            .where(table.c.account_id == account_id, table.c.use_time.is_(None))
            .values(use_time=now)
        )

    # deletion cancel links
    async def add_cancel_token(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(deletion_cancel_tokens).values(**values))

    async def use_cancel_token(self, token_hash: str, now: datetime) -> str | None:
        return await self._use_token(deletion_cancel_tokens, token_hash, now)

    async def void_cancel_tokens(self, account_id: str, now: datetime) -> None:
        await self._void_tokens(deletion_cancel_tokens, account_id, now)

    # accounting
    async def add_accounting_record(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(accounting_records).values(**values))

    async def accounting_records(self, account_id: str) -> list[dict[str, Any]]:
        query = (
            select(accounting_records)
            .where(accounting_records.c.account_id == account_id)
            .order_by(accounting_records.c.record_time)
        )
        return [dict(row._mapping) for row in await self.c.execute(query)]


class Store(KitStore[Tx]):
    tx_class = Tx
