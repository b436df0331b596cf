"""What identity does: sign-up, login, sessions, password changes and resets, deletion requests.

Use cases take plain values and return the store's records; `api` translates to and from protobuf.
Passwords are hashed outside any database transaction (a hash takes a tenth of a second and a
SQLite write transaction holds the file's write lock).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.identity.mail import Mailer, compose
from services.identity.passwords import PasswordHasher, check_rules
from services.identity.settings import IdentitySettings
from services.identity.store import Account, EmailTaken, LoginAttempt, Session, Store
from services.identity.throttle import PREFIX, LoginThrottle
from services.kit.clock import Clock
from services.kit.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.kit.tokens import (
    cursor_number,
    invalid_page_token,
    page_cursor,
    page_token,
    sha256_hex,
)

log = logging.getLogger("leadmesh.identity")

PURPOSES = ("execution_notifications", "business_matters", "new_features")
# Deliberately loose (RFC 5322 allows far more than forms do): one @, no spaces, a dotted domain.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


def normalize_email(raw: str) -> tuple[str, str]:
    """The address as it is shown (domain lower-cased) and its key (casefolded) for lookups."""
    address = raw.strip()
    control = any(ord(c) < 32 or ord(c) == 127 for c in address)
    if control or len(address) > 254 or not _EMAIL.match(address):
        raise InvalidArgument("INVALID_EMAIL", "this is not an e-mail address", field="email")
    local, _, domain = address.rpartition("@")
    address = f"{local}@{domain.lower()}"
    return address, address.casefold()


@dataclass(frozen=True)
class SignedIn:
    token: str
    session: Session
    account: Account


class Identity:
    def __init__(
        self,
        settings: IdentitySettings,
        store: Store,
        hasher: PasswordHasher,
        throttle: LoginThrottle,
        mailer: Mailer,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hasher = hasher
        self.throttle = throttle
        self.mailer = mailer
        self.clock = clock
        self._background: set[asyncio.Task] = set()

    # sign-up and login
    async def create_account(self, email: str, password: str) -> Account:
        address, key = normalize_email(email)
        check_rules(password, address)
        password_hash = await self.hasher.hash(password)
        now, account_id = self.clock.now(), str(uuid.uuid4())
        try:
            async with self.store.begin() as tx:
                await tx.create_account(
                    {
                        "id": account_id,
                        "email": address,
                        "email_key": key,
                        "password_hash": password_hash,
                        "plan": "free",
                        "status": "active",
                        "create_time": now,
                        "update_time": now,
                    }
                )
                # Users are told about their connections' executions unless they opt out.
                await tx.add_consent_event(account_id, PURPOSES[0], True, now, "signup")
                account = await tx.account(account_id)
        except EmailTaken:
            raise AlreadyExists(
                "EMAIL_TAKEN", "an account with this e-mail address exists", field="email"
            ) from None
        log.info("account created", extra={"account_id": account_id})
        assert account is not None
        return account

    async def login(self, email: str, password: str, ip: str, user_agent: str) -> SignedIn:
        invalid = Unauthenticated("INVALID_CREDENTIALS", "the e-mail address or password is wrong")
        try:
            _, key = normalize_email(email)
        except InvalidArgument:
            raise invalid from None
        async with self.store.read() as tx:
            account = await tx.account_by_email(key)
            known = False
            if account and await self.throttle.account_failures(key) >= (
                self.settings.lockout_account_limit
            ):
                known = await tx.signed_in_from(account.id, ip)
        hold = await self.throttle.admit(key, ip, known_address=known)
        if hold is not None:
            if account:
                await self._record(account.id, ip, user_agent, "throttled")
            log.info("login throttled", extra={"rule": hold.rule})
            raise ResourceExhausted(
                "LOGIN_THROTTLED",
                "too many failed logins; try again later",
                retry_after=hold.retry_after,
            )
        verdict = await self.hasher.verify(password, account.password_hash if account else None)
        if not verdict.ok or account is None:
            await self.throttle.failed(key, ip)
            if account:
                await self._record(account.id, ip, user_agent, "bad_password")
            raise invalid
        if not account.active:
            await self._record(account.id, ip, user_agent, "disabled")
            raise _disabled()
        await self.throttle.succeeded(key, ip)
        new_hash = await self.hasher.hash(password) if verdict.needs_rehash else None
        async with self.store.begin() as tx:
            # What was verified must still hold: a deletion request or a password change that
            # landed while the hash was computed wins over this login.
            now_stored = await tx.account(account.id, lock=True)
            if now_stored is None or not now_stored.active:
                raise _disabled()
            if now_stored.password_hash != account.password_hash:
                raise invalid
            if new_hash:
                await tx.update_account(account.id, password_hash=new_hash)
                log.info("password rehashed", extra={"account_id": account.id})
            signed_in = await self._open_session(tx, account, ip, user_agent)
            await self._record_in(tx, account.id, ip, user_agent, "success")
        return signed_in

    async def _record(self, account_id: str, ip: str, user_agent: str, outcome: str) -> None:
        async with self.store.begin() as tx:
            await self._record_in(tx, account_id, ip, user_agent, outcome)

    async def _record_in(self, tx, account_id: str, ip: str, user_agent: str, outcome: str) -> None:
        await tx.record_attempt(
            {
                "account_id": account_id,
                "attempt_time": self.clock.now(),
                "ip_address": ip[:64],
                "user_agent": user_agent[:512],
                "outcome": outcome,
            }
        )

    async def _open_session(self, tx, account: Account, ip: str, user_agent: str) -> SignedIn:
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

    # sessions
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

    async def account(self, account_id: str) -> Account:
        async with self.store.read() as tx:
            account = await tx.account(account_id)
        if account is None:
            raise NotFound("ACCOUNT_NOT_FOUND", "no such account")
        return account

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
        async with self.store.read() as tx:
            rows = await tx.attempts(account_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return rows, _encode_page_token(rows[-1].id) if more else ""

    # passwords
    async def _confirm_password(
        self, account: Account, password: str, ip: str, field: str = "password"
    ) -> None:
        """The owner's password before a sensitive change, under the same brute-force rules as a
        login (without the caller's address, the account is its own bucket); a wrong one is
        refused naming the request's `field` that held it."""
        bucket = ip or f"account:{account.id}"
        hold = await self.throttle.admit(account.email_key, bucket, known_address=True)
        if hold is not None:
            raise ResourceExhausted(
                "LOGIN_THROTTLED",
                "too many wrong passwords; try later",
                retry_after=hold.retry_after,
            )
        if not (await self.hasher.verify(password, account.password_hash)).ok:
            await self.throttle.failed(account.email_key, bucket)
            raise Unauthenticated("INVALID_CREDENTIALS", "the password is wrong", field=field)
        await self.throttle.succeeded(account.email_key, bucket)

    async def change_password(
        self, account_id: str, current: str, new: str, ip: str, user_agent: str
    ) -> SignedIn:
        account = await self.account(account_id)
        await self._confirm_password(account, current, ip, field="current_password")
        check_rules(new, account.email, field="new_password")
        new_hash = await self.hasher.hash(new)
        async with self.store.begin() as tx:
            now = self.clock.now()
            await tx.update_account(account.id, password_hash=new_hash, update_time=now)
            await tx.revoke_sessions(account.id, now)
            await tx.void_reset_tokens(account.id, now)
            signed_in = await self._open_session(tx, account, ip, user_agent)
        log.info("password changed", extra={"account_id": account.id})
        return signed_in

    async def request_password_reset(self, email: str) -> None:
        """Mails a reset link to an active account's address; silent either way. The mail goes
        out in the background so the answer takes the same time whether or not it is sent."""
        _, key = normalize_email(email)
        count = await self.throttle.counters.hit(f"{PREFIX}reset:{sha256_hex(key)}", 3600)
        async with self.store.begin() as tx:
            account = await tx.account_by_email(key)
            if account is None or not account.active:
                return
            if count > self.settings.reset_mails_per_hour:
                log.info("reset mail suppressed", extra={"account_id": account.id})
                return
            token, now = secrets.token_urlsafe(32), self.clock.now()
            expire = now + timedelta(seconds=self.settings.reset_token_seconds)
            await tx.add_reset_token(
                {
                    "token_hash": sha256_hex(token),
                    "account_id": account.id,
                    "create_time": now,
                    "expire_time": expire,
                }
            )
        minutes = self.settings.reset_token_seconds // 60
        link = f"{self.settings.mesh.frontend_url.rstrip('/')}/password-reset?token={token}"
        message = compose(
            sender=self.settings.mail_from,
            to=account.email,
            subject="Reset your leadmesh password",
            body=(
                "Someone asked to reset the password of your leadmesh account.\n\n"
                f"To choose a new password, open this link within {minutes} minutes:\n{link}\n\n"
                "The link works once. If you did not ask for it, ignore this message: "
                "your password stays as it is.\n"
            ),
            when=now,
        )
        self.background(self.mailer.send([message]))

    async def confirm_password_reset(self, token: str, new_password: str) -> None:
        invalid = InvalidArgument(
            "RESET_TOKEN_INVALID", "this reset link is unknown, used or expired", field="token"
        )
        digest_ = sha256_hex(token)
        async with self.store.read() as tx:
            # The rules and the hash are checked before the token is spent.
            account_id = await tx.live_reset_token(digest_, self.clock.now())
            account = await tx.account(account_id) if account_id else None
        if account is None or not account.active:
            raise invalid
        check_rules(new_password, account.email, field="new_password")
        new_hash = await self.hasher.hash(new_password)
        async with self.store.begin() as tx:
            now = self.clock.now()
            if await tx.use_reset_token(digest_, now) != account.id:
                raise invalid
            await tx.update_account(account.id, password_hash=new_hash, update_time=now)
            await tx.revoke_sessions(account.id, now)
            await tx.void_reset_tokens(account.id, now)
        # Whoever holds the mailbox is the owner: the account-wide failure count starts afresh.
        await self.throttle.forgive(account.email_key)
        log.info("password reset", extra={"account_id": account.id})

    # deletion
    async def request_deletion(
        self, account_id: str, password: str, ip: str = ""
    ) -> tuple[datetime, datetime]:
        account = await self.account(account_id)
        await self._confirm_password(account, password, ip)
        now = self.clock.now()
        async with self.store.begin() as tx:
            await tx.update_account(
                account.id, status="disabled", deletion_request_time=now, update_time=now
            )
            await tx.revoke_sessions(account.id, now)
            await tx.void_reset_tokens(account.id, now)
        log.info("deletion requested", extra={"account_id": account.id})
        return now, now + timedelta(days=self.settings.erase_after_days)

    async def deletion_requests(
        self, page_size: int, page_token: str
    ) -> tuple[list[tuple[str, datetime]], str]:
        """(account id, request time) of every deletion request, oldest first, a page at a time:
        what the other services reconcile their suspensions from."""
        size = min(max(page_size or 500, 1), 1000)
        after = _decode_deletion_token(page_token) if page_token else None
        async with self.store.read() as tx:
            rows = await tx.deletion_requests(after, size + 1)
        more, rows = len(rows) > size, rows[:size]
        return rows, _encode_deletion_token(*rows[-1]) if more else ""

    # background work
    def background(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _disabled() -> PermissionDenied:
    return PermissionDenied("ACCOUNT_DISABLED", "this account is being deleted")


def _encode_page_token(last_id: int) -> str:
    return page_token(f"before:{last_id}")


def _decode_page_token(token: str) -> int:
    prefix, _, value = page_cursor(token).partition(":")
    if prefix != "before":
        raise invalid_page_token()
    return cursor_number(value, low=1)


def _encode_deletion_token(account_id: str, requested: datetime) -> str:
    return page_token(f"deleted:{requested.isoformat()}|{account_id}")


def _decode_deletion_token(token: str) -> tuple[datetime, str]:
    prefix, _, rest = page_cursor(token).partition(":")
    when, _, account_id = rest.partition("|")
    try:
        requested = datetime.fromisoformat(when)
        account_id = str(uuid.UUID(account_id))
    except ValueError:
        raise invalid_page_token() from None
    if prefix != "deleted" or requested.tzinfo is None:
        raise invalid_page_token()
    return requested, account_id
