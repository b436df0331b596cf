"""Deletion requests: the owner's request (password asked again) and its confirmation mail, the
cancel link of that mail, the listing the other services reconcile their suspensions from, and
the erasure certificate mailed before the account is forgotten.

A request disables the account, ends every session and reset link at once, and sets the erase
deadline (`IDENTITY_ERASE_AFTER_DAYS`) and the end of the grace period
(`IDENTITY_DELETION_GRACE_DAYS`). Until the grace period ends, the mail's single-use link (only its
SHA-256 is stored) re-enables the account; the user signs in again, since the sessions stay ended.
Identity's record is the truth the runner and the vault catch up from (`ListDeletionRequests`):
a cancelled request leaves the listing, and their suspensions are lifted. Neither the address nor
a link is ever logged; this module never erases anything itself (retention.py does).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from datetime import datetime, timedelta

from services.identity.accounts import Accounts
from services.identity.mail import Background, Mailer, compose
from services.identity.reauthentication import Reauthentication
from services.identity.settings import IdentitySettings
from services.identity.store import Account, Store
from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound, Unavailable
from services.kit.tokens import invalid_page_token, page_cursor, page_token, sha256_hex

log = logging.getLogger("leadmesh.identity")

_CASE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _cancel_token_invalid() -> InvalidArgument:
    return InvalidArgument(
        "DELETION_CANCEL_TOKEN_INVALID",
        "this cancel link is unknown, used, or past the grace period",
        field="token",
    )


class Deletion:
    def __init__(
        self,
        settings: IdentitySettings,
        accounts: Accounts,
        reauthentication: Reauthentication,
        store: Store,
        clock: Clock,
        mailer: Mailer,
        background: Background | None = None,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.reauthentication = reauthentication
        self.store = store
        self.clock = clock
        self.mailer = mailer
        self.background = background or Background()

    def erase_deadline(self, requested: datetime) -> datetime:
        return requested + timedelta(days=self.settings.erase_after_days)

    def grace_end(self, requested: datetime) -> datetime:
        return requested + timedelta(days=self.settings.deletion_grace_days)

    async def request_deletion(
        self, account_id: str, password: str, ip: str = ""
    ) -> tuple[datetime, datetime]:
        """(request time, erase deadline) of the account's deletion; the confirmation mail (with
        its cancel link) goes out after the answer."""
        account = await self.accounts.account(account_id)
        await self.reauthentication.confirm(account, password, ip)
        now = self.clock.now()
        token = secrets.token_urlsafe(32) if self.settings.deletion_grace_days else None
        async with self.store.begin() as tx:
            await tx.update_account(
                account.id, status="disabled", deletion_request_time=now, update_time=now
            )
            await tx.revoke_sessions(account.id, now)
            await tx.void_reset_tokens(account.id, now)
            await tx.void_cancel_tokens(account.id, now)
            if token is not None:
                await tx.add_cancel_token(
                    {
                        "token_hash": sha256_hex(token),
                        "account_id": account.id,
                        "create_time": now,
                        "expire_time": self.grace_end(now),
                    }
                )
        log.info("deletion requested", extra={"account_id": account.id})
        self.background.send(self._confirmation(account, token, now))
        return now, self.erase_deadline(now)

    async def _confirmation(self, account: Account, token: str | None, now: datetime) -> None:
        deadline = f"{self.erase_deadline(now):%Y-%m-%d}"
        body = (
            "You asked to delete your leadmesh account. It is disabled now, and it will be "
            f"erased for good, with its connections, runs and credentials, by {deadline} (UTC).\n\n"
        )
        if token is not None:
            link = f"{self.settings.mesh.frontend_url.rstrip('/')}/deletion-cancel?token={token}"
            body += (
                f"Changed your mind? Open this link before {self.grace_end(now):%Y-%m-%d %H:%M} "
                f"(UTC) to keep your account:\n{link}\n\n"
                "The link works once. Afterwards, sign in again.\n"
            )
        message = compose(
            sender=self.settings.mail_from,
            to=account.email,
            subject="Your leadmesh account will be deleted",
            body=body,
            when=now,
        )
        await self.mailer.send([message])

    async def cancel_deletion(self, token: str) -> str:
        """Re-enables the account of a live cancel link, spending it; returns the account id."""
        if not token:
            raise _cancel_token_invalid()
        async with self.store.begin() as tx:
            now = self.clock.now()
            account_id = await tx.use_cancel_token(sha256_hex(token), now)
            account = await tx.account(account_id, lock=True) if account_id else None
            requested = account.deletion_request_time if account else None
            # The grace period as it is set now, not only as it was when the link was made:
            # retention erases from its end on, and a link never outlives it.
            if account is None or requested is None or now >= self.grace_end(requested):
                raise _cancel_token_invalid()  # the transaction rolls back: nothing spent
            await tx.update_account(
                account.id, status="active", deletion_request_time=None, update_time=now
            )
            await tx.void_cancel_tokens(account.id, now)
        log.info("deletion cancelled", extra={"account_id": account.id})
        return account.id

    async def send_erasure_certificate(
        self, account_id: str, case_id: str, certificate: str
    ) -> None:
        """Mails the certificate (a JSON attachment) to the account's address, and returns once
        it is sent: retention erases identity only after this succeeded."""
        try:
            json.loads(certificate)
        except ValueError:
            raise InvalidArgument(
                "INVALID_CERTIFICATE", "the certificate is not JSON", field="certificate"
            ) from None
        if not _CASE_ID.fullmatch(case_id):
            raise InvalidArgument("INVALID_CASE_ID", "name the erasure case", field="case_id")
        async with self.store.read() as tx:
            account = await tx.account(account_id) if account_id else None
        if account is None:
            raise NotFound("ACCOUNT_NOT_FOUND", "no such account")
        message = compose(
            sender=self.settings.mail_from,
            to=account.email,
            subject="Your leadmesh account has been erased",
            body=(
                "As you asked, your leadmesh account and its data have been erased. The attached "
                "certificate lists, per service, what was erased and what the law obliges us to "
                "keep (accounting records), and why. This is the last message you receive from "
                "us: your address is erased next.\n"
            ),
            when=self.clock.now(),
        )
        message.add_attachment(
            certificate.encode(),
            maintype="application",
            subtype="json",
            filename=f"erasure-certificate-{case_id}.json",
        )
        try:
            await self.mailer.send([message])
        except OSError as error:  # smtplib's errors are OSErrors
            log.warning(
                "erasure certificate not sent",
                extra={"account_id": account.id, "error": type(error).__name__},
            )
            raise Unavailable("MAIL_UNAVAILABLE", "the mail could not be sent; retry") from None
        log.info("erasure certificate sent", extra={"account_id": account.id, "case_id": case_id})

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

    async def drain(self) -> None:
        """Waits for the confirmation mails still being sent (at shutdown, and in tests)."""
        await self.background.drain()


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
