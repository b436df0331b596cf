"""Identity's login history, sealed at rest: the IP address and user agent of each login attempt
are AES-256-GCM under the vault's key of the account and the attempt's UTC day of the
`login_history` category (services/kit/sealing.py). When the day passes the category's max age
(`IDENTITY_LOGIN_HISTORY_DAYS`) the vault destroys its key, and at an erasure the account's: then
every copy of those values, backups included, is unreadable. Ids, times and outcomes stay in the
clear, so lists, counts and purges never open anything.

A login never fails because of sealing and never waits on the vault for long: the attempt's key
is asked for while its password is hashed, and when it is not there in time (the vault down or
slow, the key not in memory) the attempt is recorded without its address and user agent (NULL:
not recorded) — never in plaintext, and never refused for it.

Reads open a page with one key request (`opened`); a value that does not open — its day's key
destroyed, the account's key shredded, a value moved to another row — reads as purged. The
known-address rule of the lockout (DESIGN "Rules": an address that signed in before is exempt from
an account's backoff) opens the account's latest successful attempts (`signed_in_from`).

Never logs, and never puts in an error, an address, a user agent or a key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from services.identity.store import LoginAttempt, Store
from services.kit.clock import Clock
from services.kit.errors import Unavailable
from services.kit.sealing import (
    ExecutionKeys,
    KeysUnavailable,
    SealedColumns,
    Unreadable,
    UserKeys,
    day_of,
    is_sealed,
)

log = logging.getLogger("leadmesh.identity")

CATEGORY = "login_history"
# The row's integer id is only known after its insert: it names itself by owner and time (two
# attempts of one account in the same microsecond could swap values, and say the same).
SEALED = SealedColumns(
    category=CATEGORY,
    table="login_attempts",
    columns=("ip_address", "user_agent"),
    time_column="attempt_time",
    owner_column="account_id",
    id_columns=("account_id", "attempt_time"),
)
# How long a login waits for its key after its password was checked (the fetch starts before the
# hash, which takes a tenth of a second): past it, the attempt is recorded without the two values.
KEY_WAIT_SECONDS = 0.5
# The known-address rule opens at most this many of an account's latest successful attempts
# (it runs only for an account past its consecutive-failure limit, i.e. under attack).
KNOWN_ADDRESS_ROWS = 200
# Seconds a caller is told to wait when the vault cannot be asked to open a page.
RETRY_AFTER_SECONDS = 5.0


@dataclass(frozen=True)
class PendingAttempt:
    """An attempt about to be recorded: its time (its key's day) and its key, on the way."""

    account_id: str
    attempt_time: datetime
    keys: asyncio.Future[UserKeys] | None


class LoginHistory:
    """Writes and reads `login_attempts` with its two sealed columns.

    `keys` None: no vault (a test of other rules); `seal` False: new attempts are written in
    plaintext (values sealed before are still opened)."""

    def __init__(
        self, store: Store, clock: Clock, keys: ExecutionKeys | None, *, seal: bool = True
    ) -> None:
        if seal and keys is None:
            raise ValueError("sealing the login history needs the vault's execution keys")
        self.store = store
        self.clock = clock
        self.keys = keys
        self.seal = seal

    def begin(self, account_id: str) -> PendingAttempt:
        """Fixes the attempt's time and starts fetching its key (awaited by `row`)."""
        now = self.clock.now()
        if not self.seal or self.keys is None:
            return PendingAttempt(account_id, now, None)
        fetch = asyncio.ensure_future(
            self.keys.for_user(account_id, [(CATEGORY, day_of(now))], create=True)
        )
        fetch.add_done_callback(_retrieve)
        return PendingAttempt(account_id, now, fetch)

    async def row(
        self, pending: PendingAttempt, ip: str, user_agent: str, outcome: str
    ) -> dict[str, Any]:
        """The attempt's row, its address and user agent sealed, or NULL when no key came in
        time. Never raises for the vault."""
        row: dict[str, Any] = {
            "account_id": pending.account_id,
            "attempt_time": pending.attempt_time,
            "ip_address": ip[:64],
            "user_agent": user_agent[:512],
            "outcome": outcome,
        }
        if pending.keys is None:
            return row
        keys = await _within(pending.keys, KEY_WAIT_SECONDS)
        try:
            sealed = SEALED.seal_row(keys, row) if keys is not None else None
        except Unreadable:  # the day's key is destroyed: this process's clock is far behind
            sealed = None
        if sealed is None:
            log.warning("login attempt recorded without address and user agent: no key in time")
            return {**row, "ip_address": None, "user_agent": None}
        return {**row, **sealed}

    async def record(self, pending: PendingAttempt, ip: str, user_agent: str, outcome: str) -> None:
        row = await self.row(pending, ip, user_agent, outcome)
        async with self.store.begin() as tx:
            await tx.record_attempt(row)

    async def page(self, account_id: str, before_id: int | None, limit: int) -> list[LoginAttempt]:
        async with self.store.read() as tx:
            rows = await tx.attempts(account_id, before_id, limit)
        return await self.opened(account_id, rows)

    async def opened(self, account_id: str, rows: Sequence[LoginAttempt]) -> list[LoginAttempt]:
        """The rows with their values opened, by one key request for the page; a value that
        does not open reads as purged (empty, `purged`). `Unavailable` when the vault cannot be
        asked and the keys are not in memory."""
        keys = await self._keys_for(account_id, rows)
        return [_opened(account_id, row, keys) for row in rows]

    async def signed_in_from(self, account_id: str, ip: str) -> bool:
        """Whether `ip` signed in to the account before (the known-address rule). With the
        vault unreachable a sealed address cannot be compared: the address counts as a
        stranger's (slowed by the backoff like any), never as known."""
        async with self.store.read() as tx:
            if await tx.signed_in_from(account_id, ip[:64]):  # written before sealing
                return True
            rows = await tx.latest_successes(account_id, KNOWN_ADDRESS_ROWS)
        rows = [row for row in rows if is_sealed(row.ip_address)]
        if not rows or self.keys is None:
            return False
        refs = {(CATEGORY, day_of(row.attempt_time)) for row in rows}
        fetch = asyncio.ensure_future(self.keys.for_user(account_id, refs))
        keys = await _within(fetch, KEY_WAIT_SECONDS)
        if keys is None:
            return False
        return any(_opened(account_id, row, keys).ip_address == ip[:64] for row in rows)

    async def _keys_for(self, account_id: str, rows: Sequence[LoginAttempt]) -> UserKeys | None:
        sealed = [row for row in rows if is_sealed(row.ip_address) or is_sealed(row.user_agent)]
        if not sealed:
            return None
        if self.keys is None:
            raise _unavailable()
        refs = {(CATEGORY, day_of(row.attempt_time)) for row in sealed}
        try:
            return await self.keys.for_user(account_id, refs)
        except KeysUnavailable:
            raise _unavailable() from None


def _opened(account_id: str, row: LoginAttempt, keys: UserKeys | None) -> LoginAttempt:
    mapping = {
        "account_id": account_id,
        "attempt_time": row.attempt_time,
        "ip_address": row.ip_address,
        "user_agent": row.user_agent,
    }
    try:
        values = SEALED.open_row(keys, mapping) if keys is not None else mapping
    except Unreadable:
        return replace(row, ip_address="", user_agent="", purged=True)
    return replace(
        row, ip_address=values.get("ip_address") or "", user_agent=values.get("user_agent") or ""
    )


async def _within(fetch: asyncio.Future[UserKeys], seconds: float) -> UserKeys | None:
    """The keys if they come within `seconds`, else None; the fetch goes on meanwhile (its
    answer is kept in memory for the next attempt). Never raises for the vault."""
    try:
        return await asyncio.wait_for(asyncio.shield(fetch), seconds)
    except (TimeoutError, KeysUnavailable):
        return None
    except Exception:  # a refusal (a misconfigured certificate): logged by kind, never by value
        log.exception("execution keys for the login history could not be fetched")
        return None


def _retrieve(fetch: asyncio.Future[UserKeys]) -> None:
    """A fetch nobody awaited any more (a login refused first) ends quietly."""
    if not fetch.cancelled():
        fetch.exception()


def _unavailable() -> Unavailable:
    return Unavailable(
        "EXECUTION_KEYS_UNAVAILABLE",
        "the login history cannot be opened now; try again later",
        retry_after=RETRY_AFTER_SECONDS,
    )
