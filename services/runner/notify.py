"""Notices by e-mail: each stored notification is also mailed through identity, which knows the
address and the owner's consent to execution notifications (the runner never sees either).
Best effort: the notification itself is already stored and listed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from leadmesh.identity.v1 import identity_pb2

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

    async def __call__(self, notices: list[dict[str, Any]]) -> None:
        """Sends in the background: recording never waits for mail."""
        task = asyncio.create_task(self._send(notices))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, notices: list[dict[str, Any]]) -> None:
        for notice in notices:
            link = f"{self.frontend_url}/notifications"
            if notice.get("connection_id"):
                link = f"{self.frontend_url}/connections/{notice['connection_id']}"
            try:
                await self.identity.NotifyAccount(
                    identity_pb2.NotifyAccountRequest(
                        account_id=notice["user_id"],
                        subject=SUBJECTS.get(notice["kind"], "About your connections"),
                        body=f"{notice['message']}\n\nDetails: {link}\n",
                    )
                )
            except grpc.aio.AioRpcError as error:
                log.warning("notice not mailed", extra={"grpc_code": error.code().name})

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
