"""Password reset by e-mail: a link mailed to an active account's address, spent once to set a
new password, which ends every session and every other link.

Only SHA-256 digests of the reset tokens are stored. Asking for a link answers the same whether or
not the address has an account (the mail goes out in the background, so the answer takes the same
time), and at most `IDENTITY_RESET_MAILS_PER_HOUR` links go to one address an hour. Neither the
address nor the link is ever logged.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable
from datetime import datetime, timedelta

from services.identity.accounts import normalize_email
from services.identity.mail import Background, Mailer, compose
from services.identity.passwords import PasswordHasher, check_rules
from services.identity.settings import IdentitySettings
from services.identity.store import Account, Store
from services.identity.throttle import PREFIX, LoginThrottle
from services.kit.clock import Clock
from services.kit.errors import InvalidArgument
from services.kit.tokens import sha256_hex

log = logging.getLogger("leadmesh.identity")


class PasswordReset:
    def __init__(
        self,
        settings: IdentitySettings,
        store: Store,
        hasher: PasswordHasher,
        throttle: LoginThrottle,
        mailer: Mailer,
        clock: Clock,
        background: Background | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hasher = hasher
        self.throttle = throttle
        self.mailer = mailer
        self.clock = clock
        self.background = background or Background()

    async def request_password_reset(self, email: str) -> None:
        """Mails a reset link to an active account's address; silent either way."""
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
        self.background.send(self._reset_mail(account, token, now))

    def _reset_mail(self, account: Account, token: str, now: datetime) -> Awaitable[None]:
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
        return self.mailer.send([message])

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

    async def drain(self) -> None:
        """Waits for the reset mails still being sent (at shutdown, and in tests)."""
        await self.background.drain()
