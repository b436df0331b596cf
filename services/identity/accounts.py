"""Accounts: sign-up and the profile a signed-in user reads.

Every address is normalized here once (shown form and lookup key), for sign-up, login and resets
alike. The password is hashed outside the database transaction (a hash takes a tenth of a second
and a SQLite write transaction holds the file's write lock); only the hash is ever stored.
"""

from __future__ import annotations

import logging
import re
import uuid

from services.identity.consents import PURPOSES
from services.identity.passwords import PasswordHasher, check_rules
from services.identity.store import Account, EmailTaken, Store
from services.kit.clock import Clock
from services.kit.errors import AlreadyExists, InvalidArgument, NotFound

log = logging.getLogger("leadmesh.identity")

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


class Accounts:
    def __init__(self, store: Store, hasher: PasswordHasher, clock: Clock) -> None:
        self.store = store
        self.hasher = hasher
        self.clock = clock

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

    async def account(self, account_id: str) -> Account:
        async with self.store.read() as tx:
            account = await tx.account(account_id)
        if account is None:
            raise NotFound("ACCOUNT_NOT_FOUND", "no such account")
        return account
