"""Sessions: login, the check of a session's token, ending and revoking sessions, login history.

Only SHA-256 digests of the 256-bit tokens are stored; a token leaves this module once, in the
`SignedIn` of the login that opened it. The password is verified outside any database
transaction (a hash takes a tenth of a second and a SQLite write transaction holds the file's
write lock), and what was verified is checked again inside the transaction that opens the session.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from services.identity.accounts import normalize_email
from services.identity.login_history import LoginHistory, PendingAttempt
from services.identity.passwords import PasswordHasher
from services.identity.settings import IdentitySettings
from services.identity.store import Account, LoginAttempt, Session, Store, Tx
from services.identity.throttle import LoginThrottle
from services.kit.clock import Clock
from services.kit.errors import (
    DomainError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.kit.metrics import counter
from services.kit.tokens import (
    cursor_number,
    invalid_page_token,
    page_cursor,
    page_token,
    sha256_hex,
)

log = logging.getLogger("leadmesh.identity")


@dataclass(frozen=True)
class SignedIn:
    token: str
    session: Session
    account: Account


# Logins by outcome (success, invalid_credentials, disabled, throttled) and the throttle's holds
# by rule: never the address, the account or the client's IP.
_logins = counter("leadmesh.logins")
_throttled = counter("leadmesh.logins.throttled")
_LOGIN_OUTCOMES = {
    "INVALID_CREDENTIALS": "invalid_credentials",
    "ACCOUNT_DISABLED": "disabled",
    "LOGIN_THROTTLED": "throttled",
}


class Sessions:
    def __init__(
        self,
        settings: IdentitySettings,
        store: Store,
        hasher: PasswordHasher,
        throttle: LoginThrottle,
        clock: Clock,
        history: LoginHistory,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hasher = hasher
        self.throttle = throttle
        self.clock = clock
        self.history = history

    async def login(self, email: str, password: str, ip: str, user_agent: str) -> SignedIn:
        try:
            signed_in = await self._login(email, password, ip, user_agent)
        except DomainError as error:
            _logins.add(1, {"outcome": _LOGIN_OUTCOMES.get(error.reason, "refused")})
            raise
        _logins.add(1, {"outcome": "success"})
        return signed_in

    async def _login(self, email: str, password: str, ip: str, user_agent: str) -> SignedIn:
        try:
            _, key = normalize_email(email)
        except InvalidArgument:
            raise _invalid_credentials() from None
        account = await self._admit(key, ip, user_agent)
        # The attempt's key is fetched while the password is hashed (login_history.py).
        pending = self.history.begin(account.id) if account else None
        verdict = await self.hasher.verify(password, account.password_hash if account else None)
        if not verdict.ok or account is None or pending is None:
            await self.throttle.failed(key, ip)
            if pending:
                await self.history.record(pending, ip, user_agent, "bad_password")
            raise _invalid_credentials()
        if not account.active:
            await self.history.record(pending, ip, user_agent, "disabled")
            raise _disabled()
        await self.throttle.succeeded(key, ip)
        new_hash = await self.hasher.hash(password) if verdict.needs_rehash else None
        return await self._sign_in(account, new_hash, pending, ip, user_agent)

    async def _admit(self, key: str, ip: str, user_agent: str) -> Account | None:
        """The account of an address key (None if there is none), once the lockout rules let
        this attempt through; unknown addresses are counted like known ones."""
        async with self.store.read() as tx:
            account = await tx.account_by_email(key)
        known = False
        if account and await self.throttle.account_failures(key) >= (
            self.settings.lockout_account_limit
        ):
            # Outside the transaction: a sealed address is opened with a key from the vault.
            known = await self.history.signed_in_from(account.id, ip)
        hold = await self.throttle.admit(key, ip, known_address=known)
        if hold is not None:
            if account:
                pending = self.history.begin(account.id)
                await self.history.record(pending, ip, user_agent, "throttled")
            log.info("login throttled", extra={"rule": hold.rule})
            _throttled.add(1, {"rule": hold.rule})
            raise ResourceExhausted(
                "LOGIN_THROTTLED",
                "too many failed logins; try again later",
                retry_after=hold.retry_after,
            )
        return account

    async def _sign_in(
        self,
        account: Account,
        new_hash: str | None,
        pending: PendingAttempt,
        ip: str,
        user_agent: str,
    ) -> SignedIn:
        # Sealed before the write transaction: it never waits on the vault holding SQLite's lock.
        attempt = await self.history.row(pending, ip, user_agent, "success")
        async with self.store.begin() as tx:
            # What was verified must still hold: a deletion request or a password change that
            # landed while the hash was computed wins over this login.
            now_stored = await tx.account(account.id, lock=True)
            if now_stored is None or not now_stored.active:
                raise _disabled()
            if now_stored.password_hash != account.password_hash:
                raise _invalid_credentials()
            if new_hash:
                await tx.update_account(account.id, password_hash=new_hash)
                log.info("password rehashed", extra={"account_id": account.id})
            signed_in = await self.open_session(tx, account, ip, user_agent)
            await tx.record_attempt(attempt)
        return signed_in

    async def open_session(self, tx: Tx, account: Account, ip: str, user_agent: str) -> SignedIn:
        """A new session in the caller's transaction (a login, or a password change that ended
        every other one)."""
        now = self.clock.now()
        token = secrets.token_urlsafe(32)  # 256 bits
        absolute = now + timedelta(seconds=self.settings.session_absolute_seconds)
        expire = min(now + timedelta(seconds=self.settings.session_idle_seconds), absolute)
        values = {
            "id": str(uuid.uuid4()),
            "account_id": account.id,
            "token_hash": sha256_hex(token),
            "create_time": now,
            "last_use_time": now,
            "expire_time": expire,
            "absolute_expire_time": absolute,
            "revoke_time": None,
            "ip_address": ip[:64],
            "user_agent": user_agent[:512],
        }
        await tx.add_session(values)
        del values["token_hash"]
        return SignedIn(token, Session(**values), account)

    async def authenticate(self, token: str) -> Session:
        """The live session of a token, its idle deadline moved forward (written at most once a
        minute, so busy sessions do not write on every request)."""
        now = self.clock.now()
        async with self.store.read() as tx:
            session = await tx.session_by_token(sha256_hex(token)) if token else None
            account = await tx.account(session.account_id) if session else None
        if (
            session is None
            or account is None
            or not account.active
            or session.revoke_time is not None
            or session.expire_time <= now
            or session.absolute_expire_time <= now
        ):
            raise Unauthenticated("SESSION_INVALID", "the session has ended")
        idle = timedelta(seconds=self.settings.session_idle_seconds)
        expire = min(now + idle, session.absolute_expire_time)
        if expire - session.expire_time >= timedelta(seconds=60):
            async with self.store.begin() as tx:
                await tx.touch_session(session.id, now, expire)
            session = Session(**{**session.__dict__, "last_use_time": now, "expire_time": expire})
        return session

    async def end_session(self, token: str) -> None:
        async with self.store.begin() as tx:
            await tx.revoke_session_by_token(sha256_hex(token), self.clock.now())

    async def sessions(self, account_id: str) -> list[Session]:
        async with self.store.read() as tx:
            return await tx.live_sessions(account_id, self.clock.now())

    async def revoke_other_sessions(self, account_id: str, keep: str) -> int:
        async with self.store.begin() as tx:
            return await tx.revoke_sessions(account_id, self.clock.now(), keep=keep)

    async def login_attempts(
        self, account_id: str, page_size: int, page_token: str
    ) -> tuple[list[LoginAttempt], str]:
        size = min(max(page_size or 20, 1), 100)
        before = _decode_page_token(page_token) if page_token else None
        rows = await self.history.page(account_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, _encode_page_token(rows[-1].id) if more else ""


def _invalid_credentials() -> Unauthenticated:
    # One answer whether the address or the password is wrong: it never reveals an account.
    return Unauthenticated("INVALID_CREDENTIALS", "the e-mail address or password is wrong")


def _disabled() -> PermissionDenied:
    return PermissionDenied("ACCOUNT_DISABLED", "this account is being deleted")


def _encode_page_token(last_id: int) -> str:
    return page_token(f"before:{last_id}")


def _decode_page_token(token: str) -> int:
    prefix, _, value = page_cursor(token).partition(":")
    if prefix != "before":
        raise invalid_page_token()
    return cursor_number(value, low=1)
