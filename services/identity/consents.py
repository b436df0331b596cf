"""Consents per purpose with their history, unsubscribe links, and announcements.

An unsubscribe token is `<payload>.<mac>`: the payload names the account and the purpose, the mac
is HMAC-SHA256 under the service's unsubscribe key. It needs no storage, works without logging in,
and works again (idempotent) after use, as RFC 8058 one-click links must.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import quote

from services.identity.mail import Mailer, compose
from services.identity.store import ConsentEvent, Store
from services.kit.clock import Clock
from services.kit.errors import InvalidArgument
from services.kit.tokens import b64url, unb64url

log = logging.getLogger("leadmesh.identity.consents")

BATCH = 100
# The first is granted at sign-up; the others only when the user opts in.
PURPOSES = ("execution_notifications", "business_matters", "new_features")


@dataclass
class Consent:
    purpose: str
    granted: bool = False
    update_time: datetime | None = None
    history: list[ConsentEvent] = field(default_factory=list)


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise InvalidArgument(
            "UNKNOWN_PURPOSE", f"purposes are: {', '.join(PURPOSES)}", field="purpose"
        )
    return purpose


class Consents:
    def __init__(
        self,
        store: Store,
        mailer: Mailer,
        clock: Clock,
        key: bytes,
        *,
        public_url: str,
        sender: str,
        frontend_url: str | None = None,
    ) -> None:
        self.store = store
        self.mailer = mailer
        self.clock = clock
        self._key = key
        self._public_url = public_url.rstrip("/")
        # The web app's confirmation page (LEADMESH_FRONTEND_URL; the gateway by default).
        self._frontend_url = (frontend_url or public_url).rstrip("/")
        self._sender = sender

    async def get(self, account_id: str) -> list[Consent]:
        async with self.store.read() as tx:
            events = await tx.consent_history(account_id)
        return _fold(events)

    async def update(self, account_id: str, changes: list[tuple[str, bool]]) -> list[Consent]:
        """Records a change per purpose whose state differs; others keep their state."""
        for purpose, _ in changes:
            check_purpose(purpose)
        now = self.clock.now()
        async with self.store.begin() as tx:
            current = {c.purpose: c.granted for c in _fold(await tx.consent_history(account_id))}
            for purpose, granted in changes:
                if current[purpose] != granted:
                    await tx.add_consent_event(account_id, purpose, granted, now, "settings")
                    current[purpose] = granted
            events = await tx.consent_history(account_id)
        return _fold(events)

    def unsubscribe_token(self, account_id: str, purpose: str) -> str:
        payload = f"{account_id}:{purpose}".encode()
        return f"{b64url(payload)}.{b64url(self._mac(payload))}"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"unsubscribe v1|" + payload, hashlib.sha256).digest()

    async def unsubscribe(self, token: str) -> str:
        """Withdraws the consent a link names; returns the purpose. Idempotent."""
        invalid = InvalidArgument(
            "UNSUBSCRIBE_TOKEN_INVALID", "this unsubscribe link is not valid", field="token"
        )
        try:
            encoded_payload, encoded_mac = token.split(".")
            payload, mac = unb64url(encoded_payload), unb64url(encoded_mac)
            account_id, purpose = payload.decode().split(":")
        except (ValueError, UnicodeDecodeError):
            raise invalid from None
        if not hmac.compare_digest(mac, self._mac(payload)) or purpose not in PURPOSES:
            raise invalid
        async with self.store.begin() as tx:
            account = await tx.account(account_id)
            if account is not None:
                state = {c.purpose: c.granted for c in _fold(await tx.consent_history(account_id))}
                if state[purpose]:
                    await tx.add_consent_event(
                        account_id, purpose, False, self.clock.now(), "unsubscribe"
                    )
        log.info("unsubscribed", extra={"purpose": purpose})
        return purpose

    async def announce(self, purpose: str, subject: str, body: str) -> int:
        """Mails every active account that consents to `purpose`, each message with its own
        one-click unsubscribe link (RFC 8058 List-Unsubscribe and List-Unsubscribe-Post)."""
        check_purpose(purpose)
        if not subject.strip() or not body.strip():
            raise InvalidArgument("EMPTY_ANNOUNCEMENT", "subject and body are required")
        async with self.store.read() as tx:
            recipients = await tx.consenting_accounts(purpose)
        now = self.clock.now()
        for start in range(0, len(recipients), BATCH):
            batch = [
                self._message(account_id, address, purpose, subject, body, now)
                for account_id, address in recipients[start : start + BATCH]
            ]
            await self.mailer.send(batch)
        log.info("announcement sent", extra={"purpose": purpose, "recipients": len(recipients)})
        return len(recipients)

    async def notify(self, account_id: str, subject: str, body: str) -> bool:
        """Mails one account about its connections, if it consents to execution notifications."""
        purpose = "execution_notifications"
        if not subject.strip() or not body.strip():
            raise InvalidArgument("EMPTY_NOTIFICATION", "subject and body are required")
        async with self.store.read() as tx:
            account = await tx.account(account_id) if account_id else None
            if account is None or account.status != "active":
                return False
            state = {c.purpose: c.granted for c in _fold(await tx.consent_history(account_id))}
        if not state[purpose]:
            return False
        message = self._message(
            account_id, account.email, purpose, subject[:200], body[:5000], self.clock.now()
        )
        await self.mailer.send([message])
        log.info("notification sent", extra={"purpose": purpose})
        return True

    def _message(
        self, account_id: str, address: str, purpose: str, subject: str, body: str, now
    ) -> EmailMessage:
        """A message with its own one-click unsubscribe link (RFC 8058 List-Unsubscribe and
        List-Unsubscribe-Post: the API's, which mail clients POST to) and, in its body, the web
        app's page, which asks before it POSTs: link scanners open links in bodies, and one
        opening must not unsubscribe anybody."""
        token = quote(self.unsubscribe_token(account_id, purpose), safe="")
        one_click = f"{self._public_url}/v1/unsubscribe?token={token}"
        page = f"{self._frontend_url}/unsubscribe?token={token}"
        return compose(
            sender=self._sender,
            to=address,
            subject=subject,
            body=f"{body.rstrip()}\n\n--\nTo stop receiving these e-mails: {page}\n",
            when=now,
            headers={
                "List-Unsubscribe": f"<{one_click}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )


def _fold(events: list[ConsentEvent]) -> list[Consent]:
    """One Consent per purpose, its state the latest event's, its history oldest first."""
    consents = {purpose: Consent(purpose) for purpose in PURPOSES}
    for event in events:
        consent = consents.get(event.purpose)
        if consent is None:
            continue
        consent.granted, consent.update_time = event.granted, event.event_time
        consent.history.append(event)
    return list(consents.values())
