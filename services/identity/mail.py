"""Outgoing e-mail: SMTP when SMTP_URL is set, otherwise `.eml` files under var/outbox/.

smtplib blocks, so sending runs in a thread. `smtp://host:port` upgrades with STARTTLS when the
server offers it (verifying its certificate), `smtps://` is TLS from the first byte; credentials
come from the URL's user and password, and with credentials an unencrypted connection is refused.
Messages carry reset links and unsubscribe tokens: the
outbox files are readable by their owner only, and neither addresses nor links are logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import ssl
import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger("leadmesh.identity.mail")

# The standard policy folds at 78 characters, and a header that is one long token (the URI of
# List-Unsubscribe) can only be folded by turning it into RFC 2047 encoded words, which RFC 2369
# and RFC 8058 clients do not decode: lines may be up to 998 characters (RFC 5322 §2.1.1).
POLICY = policy.default.clone(max_line_length=998)


def compose(
    *,
    sender: str,
    to: str,
    subject: str,
    body: str,
    when: datetime,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(when)
    message["Message-ID"] = make_msgid(domain="leadmesh.localhost")
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


class Background:
    """Mail sent after the answer (a reset link, a deletion confirmation): the caller does not wait
    for SMTP, and a failure is logged (without the message), never turned into the answer."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def send(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background mail failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Waits for the mail still being sent (at shutdown, and in tests)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Mailer:
    def __init__(self, smtp_url: str | None, outbox: Path, timeout: float = 30.0) -> None:
        self._smtp = urlsplit(smtp_url) if smtp_url else None
        self._outbox = outbox
        self._timeout = timeout

    @property
    def transport(self) -> str:
        return "smtp" if self._smtp else "outbox"

    async def send(self, messages: Sequence[EmailMessage]) -> None:
        if messages:
            await asyncio.to_thread(self._send_blocking, list(messages))

    def _send_blocking(self, messages: list[EmailMessage]) -> None:
        if self._smtp is None:
            for message in messages:
                self._write(message)
        else:
            self._deliver(messages)
        log.info("mail sent", extra={"count": len(messages), "transport": self.transport})

    def _write(self, message: EmailMessage) -> None:
        self._outbox.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.eml"
        path = self._outbox / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(message.as_bytes())

    def _deliver(self, messages: list[EmailMessage]) -> None:
        url = self._smtp
        assert url is not None
        host, context = url.hostname or "127.0.0.1", ssl.create_default_context()
        if url.scheme == "smtps":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                host, url.port or 465, timeout=self._timeout, context=context
            )
        else:
            client = smtplib.SMTP(host, url.port or 25, timeout=self._timeout)
        with client:
            client.ehlo()
            if url.scheme != "smtps" and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            elif url.scheme != "smtps" and url.username:
                # Credentials (and reset links) never cross a connection that is not encrypted.
                raise smtplib.SMTPNotSupportedError("the server offers no STARTTLS")
            if url.username:
                client.login(unquote(url.username), unquote(url.password or ""))
            for message in messages:
                client.send_message(message)
