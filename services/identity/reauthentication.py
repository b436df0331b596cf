"""The owner's password asked again before a sensitive change (a new password, a deletion).

Re-authentication (OWASP ASVS V2/V3) runs under the same brute-force rules as a login, so a stolen
session cannot be used to guess the password faster than the login form allows. It never opens a
session and never writes the account.
"""

from __future__ import annotations

from services.identity.passwords import PasswordHasher
from services.identity.store import Account
from services.identity.throttle import LoginThrottle
from services.kit.errors import ResourceExhausted, Unauthenticated


class Reauthentication:
    def __init__(self, hasher: PasswordHasher, throttle: LoginThrottle) -> None:
        self.hasher = hasher
        self.throttle = throttle

    async def confirm(
        self, account: Account, password: str, ip: str, field: str = "password"
    ) -> None:
        """Without the caller's address the account is its own bucket; a wrong password is
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
