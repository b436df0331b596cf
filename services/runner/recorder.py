"""What a delivery leaves behind, written durably in group commits: many concurrent deliveries
share one transaction, each waits until its own outcome is committed.

An outcome updates its run (only while its worker still holds it), adds its attempts, and counts
the connection's failures: the Nth failed run in a row pauses the connection and tells the owner.

One outcome must never fail the others of its batch (nor be delivered again because its batch
failed): every text that came from outside is made storable first (no NUL, which PostgreSQL's
text refuses; no lone surrogate; cut to its column), and if the batch still fails, its outcomes
are written one at a time, each in a savepoint; one that still fails is recorded as a failed run
with an error saying its outcome could not be stored.

Failure e-mails are gathered per connection (`failure_mails`): at most one per
`RUNNER_FAILURE_MAIL_WINDOW_SECONDS`, saying how many runs failed. The in-app notifications stay
one per failed run: each links to its run's execution details and is read or purged on its own.

Attempts and notifications are sealed as they are written (`sealed.py`), with the keys of each
batch's users had before its transaction (from memory: the worker had them before it delivered).
When they cannot be had, nothing is lost and nothing is written in plaintext that quotes a
payload: an attempt is kept without its request and response (its error says so), a
notification with a fixed text of its kind instead of its message (the e-mail still says it all).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from services.kit.batching import GroupCommit
from services.kit.clock import Clock
from services.kit.ids import time_ordered_id
from services.kit.sealing import KeysUnavailable, Ref, Unreadable, UserKeys, day_of
from services.runner.model import Attempt, Notification, Outcome, RunResult
from services.runner.sealed import ATTEMPT_DETAILS, NOTIFICATIONS, Sealing
from services.runner.store import Store, Tx
from services.runner.tables import attempts, runs

log = logging.getLogger("leadmesh.runner.recorder")

ERROR_CHARS: int = runs.c.error.type.length  # type: ignore[attr-defined]
_ATTEMPT_ERROR_CHARS: int = attempts.c.error.type.length  # type: ignore[attr-defined]
# A notification's message (its column is wider: it holds the message sealed).
_MESSAGE_CHARS = 1000
# What a notification says when it cannot be sealed: our words, quoting nothing.
UNSEALED_NOTICES = {
    "run_failed": "A run failed. Its error and details are on the run's page.",
    "connection_paused": "A connection was paused after failed runs. Fix the cause and "
    "activate it again.",
    "credential_problem": "A credential needs attention: reconnect it.",
}
_DETAILS_NOT_KEPT = "details not kept: the keys to seal them could not be had"
# A batch's users' keys: None when sealing is off; a user missing when they could not be had.
Keys = dict[str, UserKeys] | None


@dataclass(frozen=True)
class Mail:
    """An e-mail to the owner about a connection, sent (best effort) once its cause is
    committed. `count` > 1: that many failed runs gathered into one mail."""

    user_id: str
    connection_id: str | None
    kind: str
    message: str
    count: int = 1


def storable(text: str | None, limit: int) -> str | None:
    """`text` as every database stores it: NUL replaced, lone surrogates replaced, at most
    `limit` characters (the column's length)."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


class Recorder:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        pause_after: int,
        on_notices: Callable[[list[Mail]], Awaitable[None]] | None = None,
        *,
        mail_window_seconds: float = 3600.0,
        sealing: Sealing | None = None,
    ) -> None:
        self.sealing = sealing or Sealing(None, clock, enabled=False)
        self.store = store
        self.clock = clock
        self.pause_after = pause_after
        self.on_notices = on_notices
        self.mail_window = timedelta(seconds=mail_window_seconds)
        self._commits: GroupCommit[Outcome, BaseException | None] = GroupCommit(
            self._write_and_tell, name="outcome write"
        )
        self._digests: asyncio.Task | None = None

    async def record(self, outcome: Outcome) -> None:
        """Returns once the outcome is durable; concurrent outcomes share one transaction."""
        error = await self._commits.submit(outcome)
        if error is not None:
            raise error

    def start(self) -> None:
        """Mails the failures gathered while a connection's window was open, when it ends."""
        self._digests = asyncio.create_task(self._mail_gathered(), name="failure mails")

    async def close(self) -> None:
        if self._digests is not None:
            self._digests.cancel()

    async def _write_and_tell(self, outcomes: list[Outcome]) -> list[BaseException | None]:
        outcomes = [_storable(outcome) for outcome in outcomes]
        keys = await self._keys(outcomes)
        try:
            async with self.store.begin() as tx:
                mails = await self._apply(tx, outcomes, keys)
            results: list[BaseException | None] = [None] * len(outcomes)
        except Exception as error:
            log.warning(
                "writing a batch of outcomes failed; writing them one at a time",
                extra={"count": len(outcomes), "error_type": type(error).__name__},
            )
            mails, results = await self._one_at_a_time(outcomes, keys)
        await self._tell(mails)
        return results

    async def _keys(self, outcomes: list[Outcome]) -> Keys:
        """The keys each user's attempts and notifications of the batch are sealed with: one
        ask per user (answered from memory), the users together."""
        if not self.sealing.enabled:
            return None
        today = day_of(self.clock.now())
        wanted: dict[str, set[Ref]] = {}
        for outcome in outcomes:
            refs = {(ATTEMPT_DETAILS.category, day_of(a.start_time)) for a in outcome.attempts}
            if outcome.final == "failed" or outcome.notices:
                refs.add((NOTIFICATIONS.category, today))
            if refs:
                wanted.setdefault(outcome.user_id, set()).update(refs)
        users = list(wanted)
        found = await asyncio.gather(
            *(self.sealing.for_writing(u, wanted[u]) for u in users), return_exceptions=True
        )
        keys: dict[str, UserKeys] = {}
        for user_id, result in zip(users, found, strict=True):
            if isinstance(result, UserKeys):
                keys[user_id] = result
            elif not isinstance(result, KeysUnavailable):  # left out: sealing with none fails
                log.warning("execution keys failed", extra={"error_type": type(result).__name__})
        return keys

    def _sealed_attempt(self, attempt: Attempt, keys: Keys) -> Attempt:
        if keys is None:
            return attempt
        try:
            return self.sealing.seal(ATTEMPT_DETAILS, _of(keys, attempt.user_id), attempt)
        except Unreadable:
            error = f"{attempt.error}; {_DETAILS_NOT_KEPT}" if attempt.error else _DETAILS_NOT_KEPT
            return replace(
                attempt,
                request={},
                response_headers=None,
                response_body=None,
                error=storable(error, _ATTEMPT_ERROR_CHARS),
            )

    def _sealed_notice(self, notice: Notification, keys: Keys) -> Notification:
        if keys is None:
            return notice
        try:
            return self.sealing.seal(NOTIFICATIONS, _of(keys, notice.user_id), notice)
        except Unreadable:
            fixed = UNSEALED_NOTICES.get(notice.kind, "See your connections' activity.")
            return replace(notice, message=fixed)

    async def _one_at_a_time(
        self, outcomes: list[Outcome], keys: Keys
    ) -> tuple[list[Mail], list[BaseException | None]]:
        mails: list[Mail] = []
        results: list[BaseException | None] = []
        async with self.store.begin() as tx:
            for outcome in outcomes:
                try:
                    async with tx.c.begin_nested():
                        mails += await self._apply(tx, [outcome], keys)
                    results.append(None)
                    continue
                except Exception as error:
                    log.error(
                        "an outcome could not be stored; its run is recorded as failed",
                        extra={
                            "run_id": outcome.run.id,
                            "connection_id": outcome.connection_id,
                            "error_type": type(error).__name__,
                        },
                    )
                    substitute = self._unstorable(outcome, error)
                try:
                    async with tx.c.begin_nested():
                        mails += await self._apply(tx, [substitute], keys)
                    results.append(None)
                except Exception as error:  # not even that: the lease runs out, it runs again
                    results.append(error)
        return mails, results

    def _unstorable(self, outcome: Outcome, error: Exception) -> Outcome:
        run = RunResult(
            outcome.run.id,
            outcome.run.worker,
            outcome.run.attempts,
            "failed",
            f"this run's outcome could not be stored ({type(error).__name__}); "
            "the details of its attempts are not kept",
            finish_time=self.clock.now(),
        )
        return Outcome(run, outcome.connection_id, outcome.user_id, final="failed")

    async def _apply(self, tx: Tx, outcomes: list[Outcome], keys: Keys = None) -> list[Mail]:
        await tx.runs.finish([o.run for o in outcomes])
        await tx.attempts.add([self._sealed_attempt(a, keys) for o in outcomes for a in o.attempts])
        succeeded = {o.connection_id for o in outcomes if o.final == "succeeded"}
        if succeeded:
            await tx.connections.clear_failures(succeeded)
        mails: list[Mail] = []
        for outcome in outcomes:
            notices = list(outcome.notices)
            if outcome.final == "failed":
                notices.extend(await self._failed(tx, outcome))
                mails.extend(await self._gather(tx, outcome, notices))
            else:
                mails.extend(_mail(n) for n in notices)
            for notice in notices:
                await tx.notifications.add(self._sealed_notice(notice, keys))
        return mails

    async def _gather(self, tx: Tx, outcome: Outcome, notices: list[Notification]) -> list[Mail]:
        """A failed run's mails: its connection's pause at once; the failure itself gathered
        (in words a credential problem is best told in, when that was the cause)."""
        kinds = {n.kind: n for n in notices}
        told = kinds.get("credential_problem") or kinds["run_failed"]
        now = self.clock.now()
        count = await tx.failure_mails.gather(
            outcome.user_id, outcome.connection_id, told.message, now, now - self.mail_window
        )
        mails = [_mail(n) for n in notices if n.kind == "connection_paused"]
        if count:
            mails.append(
                Mail(outcome.user_id, outcome.connection_id, "run_failed", told.message, count)
            )
        return mails

    async def _failed(self, tx: Tx, outcome: Outcome) -> list[Notification]:
        now = self.clock.now()
        connection = await tx.connections.count_failure(outcome.connection_id)
        out = [
            self.notice(
                outcome.user_id,
                outcome.connection_id,
                "run_failed",
                f"A run failed after {outcome.run.attempts} attempt(s): "
                f"{outcome.run.error or 'unknown error'}",
                run_id=outcome.run.id,
            )
        ]
        if connection is None or connection.status != "active":
            return out
        if connection.consecutive_failures >= self.pause_after:
            reason = f"{connection.consecutive_failures} runs failed in a row"
            await tx.connections.update(
                connection.id, status="paused", pause_reason=reason, update_time=now
            )
            out.append(
                self.notice(
                    outcome.user_id,
                    outcome.connection_id,
                    "connection_paused",
                    f"The connection {connection.name!r} was paused: {reason}. "
                    "Fix the cause and activate it again.",
                )
            )
        return out

    async def _mail_gathered(self) -> None:
        every = min(60.0, self.mail_window.total_seconds() / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await self._tell(await self._take_gathered())
            except Exception as error:  # e-mail is best effort; the next round tries again
                log.warning(
                    "gathered failure mails failed", extra={"error_type": type(error).__name__}
                )

    async def _take_gathered(self) -> list[Mail]:
        now = self.clock.now()
        since = now - self.mail_window
        mails: list[Mail] = []
        async with self.store.begin() as tx:
            for due in await tx.failure_mails.due(since, limit=500):
                if await tx.failure_mails.take(due, now, since):
                    mails.append(
                        Mail(
                            due.user_id,
                            due.connection_id,
                            "run_failed",
                            due.last_message or "",
                            due.pending,
                        )
                    )
        return mails

    async def _tell(self, mails: list[Mail]) -> None:
        if not mails or self.on_notices is None:
            return
        try:
            await self.on_notices(mails)
        except Exception as error:  # e-mail is best effort; the notice is stored
            log.warning("notice delivery failed", extra={"error": type(error).__name__})

    def notice(
        self,
        user_id: str,
        connection_id: str | None,
        kind: str,
        message: str,
        *,
        run_id: str | None = None,
        credential_id: str | None = None,
    ) -> Notification:
        now = self.clock.now()
        return Notification(
            id=time_ordered_id(now),
            user_id=user_id,
            connection_id=connection_id,
            kind=kind,
            message=storable(message, _MESSAGE_CHARS) or "",
            run_id=run_id,
            credential_id=credential_id,
            create_time=now,
            read_time=None,
        )


def _of(keys: dict[str, UserKeys], user_id: str) -> UserKeys:
    """The user's keys, or none (they could not be had: sealing with them fails)."""
    return keys.get(user_id) or UserKeys(user_id, {})


def _mail(notice: Notification) -> Mail:
    return Mail(notice.user_id, notice.connection_id, notice.kind, notice.message)


def _storable(outcome: Outcome) -> Outcome:
    return replace(
        outcome,
        run=replace(outcome.run, error=storable(outcome.run.error, ERROR_CHARS)),
        attempts=tuple(
            replace(a, error=storable(a.error, _ATTEMPT_ERROR_CHARS)) for a in outcome.attempts
        ),
        notices=tuple(
            replace(n, message=storable(n.message, _MESSAGE_CHARS) or "") for n in outcome.notices
        ),
    )
