"""Notices by e-mail, through identity, which knows the address and the owner's consent to
execution notifications (the runner never sees either). Best effort: the notification itself is
already stored and listed. Failed runs arrive gathered per connection (the recorder sends at most
one such mail per connection per window), so a burst of failures is one mail saying how many."""

from __future__ import annotations

import asyncio
import logging

import grpc
from leadmesh.identity.v1 import identity_pb2

from services.runner.recorder import Mail

log = logging.getLogger("leadmesh.runner.notify")

SUBJECTS = {
    "run_failed": "A run of your connection failed",
    "connection_paused": "Your connection was paused",
    "credential_problem": "A credential of yours needs attention",
}


class MailNotices:
    def __init__(self, identity, frontend_url: str) -> None:
        self.identity = identity
        self.frontend_url = frontend_url.rstrip("/")
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, mails: list[Mail]) -> None:
        """Sends in the background: recording never waits for mail."""
        task = asyncio.create_task(self._send(mails))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, mails: list[Mail]) -> None:
        for mail in mails:
            link = f"{self.frontend_url}/notifications"
            if mail.connection_id:
                link = f"{self.frontend_url}/connections/{mail.connection_id}"
            subject, text = SUBJECTS.get(mail.kind, "About your connections"), mail.message
            if mail.count > 1:
                subject = f"{mail.count} runs of your connection failed"
                text = (
                    f"{mail.count} runs of this connection failed since the last e-mail about "
                    f"it. The latest: {mail.message}"
                )
            try:
                await self.identity.NotifyAccount(
                    identity_pb2.NotifyAccountRequest(
                        account_id=mail.user_id,
                        subject=subject,
                        body=f"{text}\n\nDetails: {link}\n",
                    )
                )
            except grpc.aio.AioRpcError as error:
                log.warning("notice not mailed", extra={"grpc_code": error.code().name})

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
