"""Deletion requests: the owner's request (password asked again), and the listing the other
services reconcile their suspensions from.

A request disables the account, ends every session and reset link at once, and sets the erase
deadline (`IDENTITY_ERASE_AFTER_DAYS`). Identity's record is the truth the runner and the vault
catch up from (`ListDeletionRequests`); this module never erases anything itself.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from services.identity.accounts import Accounts
from services.identity.reauthentication import Reauthentication
from services.identity.settings import IdentitySettings
from services.identity.store import Store
from services.kit.clock import Clock
from services.kit.tokens import invalid_page_token, page_cursor, page_token

log = logging.getLogger("leadmesh.identity")


class Deletion:
    def __init__(
        self,
        settings: IdentitySettings,
        accounts: Accounts,
        reauthentication: Reauthentication,
        store: Store,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.reauthentication = reauthentication
        self.store = store
        self.clock = clock

    async def request_deletion(
        self, account_id: str, password: str, ip: str = ""
    ) -> tuple[datetime, datetime]:
        """(request time, erase deadline) of the account's deletion."""
        account = await self.accounts.account(account_id)
        await self.reauthentication.confirm(account, password, ip)
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
