"""Erasure cases: from identity's deletion requests to a certificate.

Each pass (every `erasure_reconcile_seconds`, or `ProcessErasures` as of a time) reads identity's
whole record of deletion requests, so a request made while retention was down is picked up, then:

- a listed account without a case opens one (subject reference, request time, deadline and
  execution time as identity states them);
- an open case whose account is no longer listed (the owner used the cancel link) is cancelled;
- a case due (execution time reached) executes, step by step: every participant but identity
  erases the subject, then identity mails the certificate, then identity erases the account,
  then the others erase once more (a suspension their reconcilers recorded meanwhile).
  Each step is idempotent and recorded; a failed step is retried at the next pass (a participant
  down delays a case, never loses it), and a later step waits for the earlier ones.

A completed case keeps its certificate and the subject reference; the user id is gone from it.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

import grpc
from leadmesh.identity.v1 import identity_pb2

from services.kit.clock import Clock, as_utc
from services.kit.errors import Unavailable
from services.retention.leases import Leases
from services.retention.participants import SELF, Local, Participants
from services.retention.settings import RetentionSettings
from services.retention.store import Store
from services.retention.subjects import subject_ref

log = logging.getLogger("leadmesh.retention")

POLICY_ERASE_LIMIT, POLICY_GRACE = timedelta(days=60), timedelta(days=14)

IDENTITY, CERTIFICATE, SWEEP = "identity", "certificate", "sweep"
LEASE = "erasures"
PAGE_SIZE = 500
# An operator's pass waits this long for a scheduled one to finish.
OPERATOR_WAIT_SECONDS = 120.0
FORMAT_VERSION = 1


class Erasures:
    def __init__(
        self,
        settings: RetentionSettings,
        store: Store,
        participants: Participants,
        identity,  # identity's IdentityServiceStub
        leases: Leases,
        key: bytes,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.store = store
        self.participants = participants
        self.identity = identity
        self.leases = leases
        self.key = key
        self.clock = clock
        self._failures = 0

    # --- passes ---------------------------------------------------------------------------

    async def scheduled_pass(self) -> None:
        async with self.leases.try_hold(LEASE) as held:
            if not held:
                return
            try:
                await self._pass(self.clock.now())
            except grpc.aio.AioRpcError as error:
                # One warning per outage of identity, not one per pass.
                self._failures += 1
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                log.log(
                    level, "deletion requests unavailable", extra={"grpc_code": error.code().name}
                )
            else:
                self._failures = 0

    async def process(self, as_of: datetime | None) -> list[dict[str, Any]]:
        """The operator's pass: every case due at `as_of` executed; the cases it ran."""
        async with self.leases.hold(LEASE, OPERATOR_WAIT_SECONDS):
            try:
                return await self._pass(as_of or self.clock.now())
            except grpc.aio.AioRpcError as error:
                raise Unavailable(
                    "IDENTITY_UNAVAILABLE", f"identity's deletion requests: {error.code().name}"
                ) from None

    async def _pass(self, as_of: datetime) -> list[dict[str, Any]]:
        listed = await self._listed()
        await self._reconcile(listed)
        async with self.store.read() as tx:
            cases = await tx.active_cases()
        ran = []
        for case in cases:
            if case["execute_after"] > as_of:
                continue
            if case["state"] == "open" and case["user_id"] not in listed:
                continue  # cancelled just now (an executing case goes on: erasure has begun)
            ran.append(await self._execute(case))
        return ran

    async def _listed(self) -> dict[str, identity_pb2.AccountDeletion]:
        listed: dict[str, identity_pb2.AccountDeletion] = {}
        token = ""
        while True:
            reply = await self.identity.ListDeletionRequests(
                identity_pb2.ListDeletionRequestsRequest(page_size=PAGE_SIZE, page_token=token)
            )
            listed.update((d.account_id, d) for d in reply.deletions)
            token = reply.next_page_token
            if not token:
                return listed

    async def _reconcile(self, listed: dict[str, identity_pb2.AccountDeletion]) -> None:
        refs = {subject_ref(self.key, account): account for account in listed}
        now = self.clock.now()
        async with self.store.read() as tx:
            known = await tx.subjects_with_cases(list(refs))
            active = await tx.active_cases()
        for ref, account in refs.items():
            if ref in known:
                continue
            case = self._new_case(account, ref, listed[account], now)
            async with self.store.begin() as tx:
                if await tx.add_case(case):
                    log.info("erasure case opened", extra={"case_id": case["id"]})
        for case in active:
            if case["state"] == "open" and case["user_id"] not in listed:
                async with self.store.begin() as tx:
                    await tx.update_case(case["id"], state="cancelled", user_id=None, end_time=now)
                log.info("erasure case cancelled", extra={"case_id": case["id"]})

    def _new_case(
        self, account: str, ref: str, deletion: identity_pb2.AccountDeletion, now: datetime
    ) -> dict[str, Any]:
        requested = _time(deletion, "request_time") or now
        # Identity owns both times (IDENTITY_ERASE_AFTER_DAYS, IDENTITY_DELETION_GRACE_DAYS); one
        # that does not send them (an older version) gets the privacy policy's own limits.
        deadline = _time(deletion, "erase_deadline") or requested + POLICY_ERASE_LIMIT
        execute_after = _time(deletion, "grace_end_time") or requested + POLICY_GRACE
        steps = [_step(name) for name in self.step_names()]
        return {
            "id": str(uuid.uuid4()),
            "user_id": account,
            "subject_ref": ref,
            "request_time": requested,
            "deadline": deadline,
            "execute_after": execute_after,
            "state": "open",
            "open_time": now,
            "end_time": None,
            "steps": steps,
            "certificate": None,
        }

    def step_names(self) -> list[str]:
        others = [n for n in self.participants.names() if n not in (IDENTITY, SELF)]
        return [*others, SELF, CERTIFICATE, IDENTITY, SWEEP]

    # --- one case ---------------------------------------------------------------------------

    async def _execute(self, case: dict[str, Any]) -> dict[str, Any]:
        steps = {s["participant"]: s for s in case["steps"]}
        for name in self.step_names():  # a participant added since the case opened joins it
            steps.setdefault(name, _step(name))
        case = {**case, "state": "executing", "steps": list(steps.values())}
        await self._save(case)
        erasers = [n for n in self.step_names() if n not in (CERTIFICATE, IDENTITY, SWEEP)]
        for name in erasers:
            await self._erase_step(case, steps[name], name)
        if all(steps[n]["state"] == "done" for n in erasers):
            await self._certificate_step(case, steps[CERTIFICATE])
        if steps[CERTIFICATE]["state"] == "done":
            await self._erase_step(case, steps[IDENTITY], IDENTITY)
        if steps[IDENTITY]["state"] == "done":
            await self._sweep_step(case, steps, [n for n in erasers if n != SELF])
        if all(s["state"] == "done" for s in steps.values()):
            now = self.clock.now()
            case = {**case, "state": "completed", "end_time": now}
            case["certificate"] = certificate(case, self.step_names(), completed=True)
            async with self.store.begin() as tx:
                await tx.update_case(
                    case["id"],
                    state="completed",
                    user_id=None,
                    end_time=now,
                    steps=case["steps"],
                    certificate=case["certificate"],
                )
            case["user_id"] = None
            # The case's own row held the user id until now: its old bytes leave retention's
            # file too (a rebuild and a truncated log, as every participant's erasure ends).
            own = self.participants.clients.get(SELF)
            if isinstance(own, Local):
                await own.participant.compact(rebuild=True)
            log.info("erasure case completed", extra={"case_id": case["id"]})
        return case

    async def _erase_step(self, case: dict[str, Any], step: dict[str, Any], name: str) -> None:
        if step["state"] == "done":
            return
        if name not in self.participants.clients:
            return await self._failed(case, step, "participant not configured")
        try:
            erased = await self.participants[name].erase(case["user_id"], case["id"])
        except grpc.aio.AioRpcError as error:
            return await self._failed(case, step, f"{error.code().name}: {error.details() or ''}")
        except Exception as error:
            log.exception("erasure step failed", extra={"case_id": case["id"], "step": name})
            return await self._failed(case, step, type(error).__name__)
        step.update(
            state="done",
            tries=step["tries"] + 1,
            done_time=self.clock.now().isoformat(),
            error="",
            categories=[
                {
                    "category": c.category,
                    "rows_erased": c.rows_erased,
                    "rows_kept": c.rows_kept,
                    "kept_reason": c.kept_reason,
                }
                for c in erased
            ],
        )
        await self._save(case)

    async def _sweep_step(
        self, case: dict[str, Any], steps: dict[str, dict[str, Any]], names: list[str]
    ) -> None:
        """The other participants erase once more after identity: until identity forgot the
        account, their reconcilers could record the user's suspension again (ids only, but a
        trace). Idempotent; what it finds is added to each participant's own counts."""
        step = steps[SWEEP]
        if step["state"] == "done":
            return
        try:
            for name in names:
                erased = await self.participants[name].erase(case["user_id"], case["id"])
                counts = {c["category"]: c for c in steps[name]["categories"]}
                for found in erased:
                    if found.category in counts:
                        counts[found.category]["rows_erased"] += found.rows_erased
                    else:
                        steps[name]["categories"].append(
                            {
                                "category": found.category,
                                "rows_erased": found.rows_erased,
                                "rows_kept": found.rows_kept,
                                "kept_reason": found.kept_reason,
                            }
                        )
        except grpc.aio.AioRpcError as error:
            return await self._failed(case, step, f"{error.code().name}: {error.details() or ''}")
        step.update(state="done", tries=step["tries"] + 1, done_time=self.clock.now().isoformat())
        await self._save(case)

    async def _certificate_step(self, case: dict[str, Any], step: dict[str, Any]) -> None:
        if step["state"] == "done":
            return
        document = certificate(case, self.step_names(), completed=False)
        request = identity_pb2.SendErasureCertificateRequest(
            account_id=case["user_id"], case_id=case["id"], certificate=document
        )
        try:
            await self.identity.SendErasureCertificate(request)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                return await self._failed(case, step, f"{error.code().name}: {error.details()}")
            # The account is gone already (identity erased it after an earlier pass mailed it).
            step["error"] = "account no longer held: not mailed"
        step.update(state="done", tries=step["tries"] + 1, done_time=self.clock.now().isoformat())
        await self._save(case)

    async def _failed(self, case: dict[str, Any], step: dict[str, Any], error: str) -> None:
        step.update(state="failed", tries=step["tries"] + 1, error=error[:500])
        log.warning(
            "erasure step failed; retried next pass",
            extra={"case_id": case["id"], "step": step["participant"]},
        )
        await self._save(case)

    async def _save(self, case: dict[str, Any]) -> None:
        async with self.store.begin() as tx:
            await tx.update_case(case["id"], state=case["state"], steps=case["steps"])

    # --- reading ------------------------------------------------------------------------------

    def at_risk(self, case: dict[str, Any], as_of: datetime) -> bool:
        return case["state"] in ("open", "executing") and case["deadline"] - as_of <= timedelta(
            days=self.settings.at_risk_days
        )


def _step(name: str) -> dict[str, Any]:
    return {
        "participant": name,
        "state": "pending",
        "tries": 0,
        "done_time": None,
        "error": "",
        "categories": [],
    }


def certificate(case: dict[str, Any], order: list[str], *, completed: bool) -> str:
    """The case's certificate: what each participant erased and kept (with the legal basis), and
    when; no personal data beyond the subject reference. Mailed before identity's own step, the
    certificate lists that step as pending; the one kept lists it done."""
    steps = {s["participant"]: s for s in case["steps"]}
    participants = []
    for name in order:
        if name in (CERTIFICATE, SWEEP) or name not in steps:
            continue
        step = steps[name]
        participants.append(
            {
                "participant": name,
                "state": step["state"],
                "erase_time": step["done_time"],
                "categories": step["categories"],
            }
        )
    document = {
        "format_version": FORMAT_VERSION,
        "case_id": case["id"],
        "subject_ref": case["subject_ref"],
        "request_time": _iso(case["request_time"]),
        "deadline": _iso(case["deadline"]),
        "execute_after": _iso(case["execute_after"]),
        "completion_time": _iso(case["end_time"]) if completed else None,
        "certificate_mail_time": steps.get(CERTIFICATE, {}).get("done_time"),
        "participants": participants,
    }
    return json.dumps(document, sort_keys=True)


def _iso(value: datetime) -> str:
    return as_utc(value).isoformat()


def _time(message, name: str) -> datetime | None:
    return as_utc(getattr(message, name).ToDatetime()) if message.HasField(name) else None
