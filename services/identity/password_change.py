"""A signed-in user's password change: the current password asked again, the new one checked
against the rules, every session and reset link ended, one new session opened for the caller.

The new password is hashed outside the database transaction; a wrong current password is refused
naming `current_password`, the request's field that held it. It never logs a password.
"""

from __future__ import annotations

import logging

from services.identity.accounts import Accounts
from services.identity.passwords import PasswordHasher, check_rules
from services.identity.reauthentication import Reauthentication
from services.identity.sessions import Sessions, SignedIn
from services.identity.store import Store
from services.kit.clock import Clock

log = logging.getLogger("leadmesh.identity")


class PasswordChange:
    def __init__(
        self,
        accounts: Accounts,
        sessions: Sessions,
        reauthentication: Reauthentication,
        store: Store,
        hasher: PasswordHasher,
        clock: Clock,
    ) -> None:
        self.accounts = accounts
        self.sessions = sessions
        self.reauthentication = reauthentication
        self.store = store
        self.hasher = hasher
        self.clock = clock

    async def change_password(
        self, account_id: str, current: str, new: str, ip: str, user_agent: str
    ) -> SignedIn:
        account = await self.accounts.account(account_id)
        await self.reauthentication.confirm(account, current, ip, field="current_password")
        check_rules(new, account.email, field="new_password")
        new_hash = await self.hasher.hash(new)
        async with self.store.begin() as tx:
            now = self.clock.now()
            await tx.update_account(account.id, password_hash=new_hash, update_time=now)
            await tx.revoke_sessions(account.id, now)
            await tx.void_reset_tokens(account.id, now)
            signed_in = await self.sessions.open_session(tx, account, ip, user_agent)
        log.info("password changed", extra={"account_id": account.id})
        return signed_in
