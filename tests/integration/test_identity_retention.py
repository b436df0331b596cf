"""Identity as a retention participant, served over real sockets with mTLS on a real SQLite file
and a real PostgreSQL, time moved by hand: every category purged exactly at its limit, an erasure
that leaves nothing of the user but detached accounting records, an export of the user's data
only, the deletion confirmation's cancel link, the certificate mail, and who may call what."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import grpc
import pytest
from leadmesh.identity.v1 import identity_pb2 as ipb
from leadmesh.identity.v1 import identity_pb2_grpc
from leadmesh.retention.v1 import retention_pb2 as rpb
from leadmesh.retention.v1 import retention_pb2_grpc
from sqlalchemy import insert, select

from services.identity.billing import PlanChange
from services.identity.retention import ACCOUNTING
from services.identity.server import RunningIdentity, migrate_database, start
from services.identity.tables import (
    accounting_records,
    deletion_cancel_tokens,
    login_attempts,
    metadata,
    reset_tokens,
    sessions,
)
from services.kit.callers import user_metadata
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.errors import Unauthenticated, from_rpc_error
from services.kit.grpcclient import open_channel
from services.kit.timestamps import put_timestamp
from tests.integration.identity_support import PASSWORD, identity_settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
IP, UA = "198.51.100.7", "test-agent/1.0"
ADDRESS = {"line1": "1 Main St", "line2": "", "city": "Berlin", "postal_code": "10115",
           "country": "DE"}  # fmt: skip


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(NOW)


@pytest.fixture
async def identity(
    tmp_path: Path, mesh: MeshSettings, database_url: str, clock: SettableClock
) -> AsyncIterator[RunningIdentity]:
    """Identity on port 0 with a var/ of its own (its outbox), certificates from the mesh CA."""
    shutil.copytree(mesh.pki_dir, tmp_path / "pki")
    settings = identity_settings(tmp_path, database_url)
    migrate_database(settings)
    running = await start(settings, clock=clock, port=0)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def dial(identity: RunningIdentity, tmp_path: Path):
    there = MeshSettings(
        var_dir=tmp_path, identity_addr=f"127.0.0.1:{identity.port}", _env_file=None
    )
    opened: list[grpc.aio.Channel] = []

    def open_as(caller: str, stub=identity_pb2_grpc.IdentityServiceStub):
        channel = open_channel(there, "identity", caller=caller)
        opened.append(channel)
        return stub(channel)

    yield open_as
    for channel in opened:
        await channel.close()


def participant(dial, caller: str = "retention"):
    return dial(caller, retention_pb2_grpc.RetentionParticipantStub)


def reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), from_rpc_error(error).reason


async def signup(identity: RunningIdentity, label: str) -> tuple[str, str]:
    email = f"{label}-{uuid.uuid4().hex[:8]}@example.com"
    account = await identity.parts.accounts.create_account(email, PASSWORD)
    return account.id, email


async def purge(dial, category: str, cutoff: datetime) -> rpb.PurgeResponse:
    request = rpb.PurgeRequest(category=category)
    put_timestamp(request.cutoff, cutoff)
    return await participant(dial).Purge(request)


async def policies(dial, as_of: datetime) -> dict[str, rpb.Policy]:
    request = rpb.ListPoliciesRequest()
    put_timestamp(request.as_of, as_of)
    reply = await participant(dial).ListPolicies(request)
    assert reply.participant == "identity"
    return {p.category: p for p in reply.policies}


async def rows(identity: RunningIdentity, table) -> list[dict]:
    async with identity.parts.store.database.read() as connection:
        return [dict(r._mapping) for r in await connection.execute(select(table))]


async def add(identity: RunningIdentity, table, values: list[dict]) -> None:
    async with identity.parts.store.database.write() as connection:
        await connection.execute(insert(table), values)


def around(limit: datetime) -> list[datetime]:
    """A second before the limit, the limit itself, a second after."""
    return [limit - SECOND, limit, limit + SECOND]


async def test_every_timed_category_is_purged_exactly_at_its_limit(identity, dial, clock):
    user, _ = await signup(identity, "ann")
    settings = identity.parts.settings
    cutoff = {
        "sessions": NOW - timedelta(days=settings.expired_session_days),
        "reset_tokens": NOW - timedelta(days=settings.expired_reset_token_days),
        "deletion_cancel_tokens": NOW - timedelta(days=settings.expired_cancel_token_days),
        "login_history": NOW - timedelta(days=90),
        "accounting_records": NOW - timedelta(days=3653),
    }
    for n, end in enumerate(around(cutoff["sessions"])):
        await add(identity, sessions, [{
            "id": str(uuid.uuid4()), "account_id": user, "token_hash": f"{n:064d}",
            "create_time": end - timedelta(days=2), "last_use_time": end - timedelta(days=1),
            "expire_time": end, "absolute_expire_time": end + timedelta(days=20),
            "revoke_time": None, "ip_address": IP, "user_agent": UA,
        }])  # fmt: skip
    for table in (reset_tokens, deletion_cancel_tokens):
        await add(identity, table, [
            {"token_hash": f"{table.name}{n}", "account_id": user, "create_time": end - SECOND,
             "expire_time": end}
            for n, end in enumerate(around(cutoff[table.name]))
        ])  # fmt: skip
    await add(identity, login_attempts, [
        {"account_id": user, "attempt_time": when, "ip_address": IP, "user_agent": UA,
         "outcome": "success"} for when in around(cutoff["login_history"])
    ])  # fmt: skip
    await add(identity, accounting_records, [
        {"id": str(uuid.uuid4()), "account_id": user, "plan": "pro", "amount": 2900,
         "currency": "EUR", "billing_name": "Ann", "billing_address": ADDRESS,
         "payment_reference": f"pay-{n}", "record_time": when}
        for n, when in enumerate(around(cutoff["accounting_records"]))
    ])  # fmt: skip

    listed = await policies(dial, NOW)
    for category, limit in cutoff.items():
        assert listed[category].expired_rows == 1, category
        assert listed[category].oldest_time.ToDatetime(UTC) == limit - SECOND, category
        dry = rpb.PurgeRequest(category=category, dry_run=True)
        put_timestamp(dry.cutoff, limit)
        assert (await participant(dial).Purge(dry)).rows_still_expired == 1
        done = await purge(dial, category, limit)
        assert (done.rows_deleted, done.rows_still_expired) == (1, 0), category
    time_of = {"sessions": "expire_time", "reset_tokens": "expire_time",
               "deletion_cancel_tokens": "expire_time", "login_history": "attempt_time",
               "accounting_records": "record_time"}  # fmt: skip
    tables = {"sessions": sessions, "reset_tokens": reset_tokens,
              "deletion_cancel_tokens": deletion_cancel_tokens, "login_history": login_attempts,
              "accounting_records": accounting_records}  # fmt: skip
    for category, table in tables.items():
        kept = sorted(r[time_of[category]].replace(tzinfo=UTC) for r in await rows(identity, table))
        assert kept == around(cutoff[category])[1:], category
    # Kept until erasure: no cutoff applies.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await purge(dial, "account", NOW)
    assert reason(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_PURGEABLE")


async def test_a_revoked_session_is_dead_from_its_revocation_and_purged_a_day_later(
    identity, dial, clock
):
    _, email = await signup(identity, "ann")
    ended = await identity.parts.sessions.login(email, PASSWORD, IP, UA)
    live = await identity.parts.sessions.login(email, PASSWORD, IP, UA)
    clock.advance(hours=1)
    await identity.parts.sessions.end_session(ended.token)
    revoked_at = clock.now()
    # The idle deadline (a week) no longer counts: the session ended when it was revoked.
    clock.set(revoked_at + timedelta(days=1))
    assert (await purge(dial, "sessions", clock.now() - timedelta(days=1))).rows_deleted == 0
    clock.advance(1)
    assert (await purge(dial, "sessions", clock.now() - timedelta(days=1))).rows_deleted == 1
    assert [r["id"] for r in await rows(identity, sessions)] == [live.session.id]


async def test_mail_in_the_outbox_is_purged_after_seven_days(identity, dial, clock):
    outbox = identity.parts.settings.outbox_dir
    outbox.mkdir(parents=True)
    for name, age in (("old", 7 * 86400 + 1), ("edge", 7 * 86400), ("young", 7 * 86400 - 1)):
        path = outbox / f"{name}.eml"
        path.write_text("To: ann@example.com\n\nreset link")
        when = (NOW.timestamp()) - age
        os.utime(path, (when, when))
    (outbox / "notes.txt").write_text("not mail")
    assert (await policies(dial, NOW))["outbox"].expired_rows == 1
    done = await purge(dial, "outbox", NOW - timedelta(days=7))
    assert done.rows_deleted == 1
    assert sorted(p.name for p in outbox.iterdir()) == ["edge.eml", "notes.txt", "young.eml"]


async def request_deletion(dial, user: str) -> ipb.DeletionRequest:
    return await dial("gateway").RequestDeletion(
        ipb.RequestDeletionRequest(password=PASSWORD, ip_address=IP), metadata=user_metadata(user)
    )


async def everything_of(identity: RunningIdentity, label: str) -> tuple[str, str]:
    """An account with a row in every table: sessions, attempts, consents, a reset link, a plan
    (an accounting record), and its deletion requested (a cancel link)."""
    user, email = await signup(identity, label)
    parts = identity.parts
    await parts.sessions.login(email, PASSWORD, IP, UA)
    with pytest.raises(Unauthenticated):
        await parts.sessions.login(email, "wrong password", IP, UA)
    await parts.consents.update(user, [("new_features", True)])
    await parts.billing.change_plan(
        user, PlanChange(plan="pro", billing_name=f"{label} Example", billing_address=ADDRESS,
                         payment_reference=f"pay-{label}")
    )  # fmt: skip
    await parts.password_reset.request_password_reset(email)
    await parts.deletion.request_deletion(user, PASSWORD, IP)
    await parts.background.drain()
    return user, email


async def every_row(identity: RunningIdentity) -> str:
    dumped = []
    for table in metadata.sorted_tables:
        dumped += [json.dumps(r, default=str) for r in await rows(identity, table)]
    return "\n".join(dumped)


async def test_an_erasure_leaves_nothing_of_the_user_but_detached_accounting_records(
    identity, dial, database_url: str
):
    ann, ann_email = await everything_of(identity, "ann")
    bob, bob_email = await everything_of(identity, "bob")
    before = await every_row(identity)
    assert ann in before and ann_email in before

    reply = await participant(dial).EraseSubject(rpb.EraseSubjectRequest(user_id=ann, case_id="c1"))

    outcome = {c.category: (c.rows_erased, c.rows_kept, c.kept_reason) for c in reply.categories}
    assert outcome == {
        "consents": (2, 0, ""),
        "sessions": (1, 0, ""),
        "reset_tokens": (1, 0, ""),
        "deletion_cancel_tokens": (1, 0, ""),
        "login_history": (2, 0, ""),
        "accounting_records": (0, 1, ACCOUNTING),
        "account": (1, 0, ""),
    }
    after = await every_row(identity)
    assert ann not in after and ann_email.lower() not in after.lower()
    assert bob in after and bob_email in after
    records = await rows(identity, accounting_records)
    kept = {r["payment_reference"]: r["account_id"] for r in records}
    assert kept == {"pay-ann": None, "pay-bob": bob}
    if database_url.startswith("sqlite"):  # deleted means gone from the file, too
        database = Path(database_url.removeprefix("sqlite:///"))
        for path in database.parent.glob(f"{database.name}*"):
            assert ann_email.encode() not in path.read_bytes(), path.name
            assert ann.encode() not in path.read_bytes(), path.name
    # Idempotent: a second erasure finds nothing; the listing no longer names the account.
    again = await participant(dial).EraseSubject(rpb.EraseSubjectRequest(user_id=ann))
    assert all(c.rows_erased == c.rows_kept == 0 for c in again.categories)
    listed = await dial("retention").ListDeletionRequests(ipb.ListDeletionRequestsRequest())
    assert [d.account_id for d in listed.deletions] == [bob]


async def test_an_account_whose_deletion_was_not_requested_is_never_erased(identity, dial):
    kept, _ = await signup(identity, "kept")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await participant(dial).EraseSubject(rpb.EraseSubjectRequest(user_id=kept))
    assert reason(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "DELETION_NOT_REQUESTED")
    assert kept in await every_row(identity)


async def export(dial, caller: str, user: str) -> list[tuple[str, dict]]:
    stub = participant(dial, caller)
    if caller == "gateway":
        stream = stub.ExportSubject(rpb.ExportSubjectRequest(), metadata=user_metadata(user))
    else:
        stream = stub.ExportSubject(rpb.ExportSubjectRequest(user_id=user))
    return [(r.section, json.loads(r.json)) async for b in stream for r in b.records]


async def test_the_export_holds_the_users_data_and_nobody_elses_never_a_secret(identity, dial):
    ann, ann_email = await everything_of(identity, "ann")
    bob, bob_email = await everything_of(identity, "bob")
    hashes = "\n".join(
        [r["password_hash"] for r in await rows(identity, metadata.tables["accounts"])]
        + [r["token_hash"] for t in (sessions, reset_tokens, deletion_cancel_tokens)
           for r in await rows(identity, t)]
    )  # fmt: skip
    for caller in ("gateway", "retention"):
        records = await export(dial, caller, ann)
        sections = {section for section, _ in records}
        assert sections == {"account", "consents", "sessions", "password_resets",
                            "deletion_requests", "login_history", "accounting_records"}  # fmt: skip
        text = json.dumps(records)
        assert ann_email in text and "pay-ann" in text and IP in text
        assert bob not in text and bob_email not in text and "pay-bob" not in text
        for secret in hashes.split("\n"):
            assert secret not in text
        assert "password_hash" not in text and "token_hash" not in text
        (account,) = [r for s, r in records if s == "account"]
        assert account["id"] == ann and account["plan"] == "pro"


def mails_in(outbox: Path) -> list:
    return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in outbox.glob("*.eml")]


def cancel_token(outbox: Path, email: str) -> tuple[str, str]:
    """(link, token) of the newest deletion mail to `email`."""
    mails = [
        message_from_bytes(p.read_bytes(), policy=policy.default) for p in outbox.glob("*.eml")
    ]
    (mail,) = [m for m in mails if m["To"] == email and "deleted" in m["Subject"]]
    body = mail.get_content()
    link = re.search(r"https://\S+/deletion-cancel\?token=\S+", body).group(0)
    return link, link.rsplit("=", 1)[1]


async def test_the_cancel_link_works_once_within_the_grace_period_only(identity, dial, clock):
    parts = identity.parts
    gateway = dial("gateway")
    ann, ann_email = await signup(identity, "ann")
    signed = await gateway.Login(ipb.LoginRequest(email=ann_email, password=PASSWORD))

    requested = await request_deletion(dial, ann)
    await parts.deletion.drain()

    link, token = cancel_token(parts.settings.outbox_dir, ann_email)
    assert link.startswith(f"{parts.settings.mesh.frontend_url}/deletion-cancel?token=")
    stored = await rows(identity, deletion_cancel_tokens)
    assert [r["token_hash"] for r in stored] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in await every_row(identity)
    request_time = requested.request_time.ToDatetime(UTC)
    (listed,) = (
        await dial("runner").ListDeletionRequests(ipb.ListDeletionRequestsRequest())
    ).deletions
    assert listed.erase_deadline.ToDatetime(UTC) == request_time + timedelta(days=60)
    assert listed.grace_end_time.ToDatetime(UTC) == request_time + timedelta(days=14)
    with pytest.raises(grpc.aio.AioRpcError) as disabled:
        await gateway.Login(ipb.LoginRequest(email=ann_email, password=PASSWORD))
    assert reason(disabled.value) == (grpc.StatusCode.PERMISSION_DENIED, "ACCOUNT_DISABLED")

    clock.set(request_time + timedelta(days=14) - SECOND)  # the last second of the grace period
    await gateway.CancelDeletion(ipb.CancelDeletionRequest(token=token))

    listing = await dial("vault").ListDeletionRequests(ipb.ListDeletionRequestsRequest())
    assert list(listing.deletions) == []
    # Signing in works again; the sessions ended by the request stay ended.
    await gateway.Login(ipb.LoginRequest(email=ann_email, password=PASSWORD))
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await gateway.AuthenticateSession(
            ipb.AuthenticateSessionRequest(session_token=signed.session_token)
        )
    assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "DELETION_CANCEL_TOKEN_INVALID")
    for spent in (token, "", "no-such-token"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.CancelDeletion(ipb.CancelDeletionRequest(token=spent))
        assert reason(refused.value) == invalid

    # A second request mails a new link; at the grace period's end it no longer works.
    for path in parts.settings.outbox_dir.glob("*.eml"):
        path.unlink()
    again = await request_deletion(dial, ann)
    await parts.deletion.drain()
    _, late = cancel_token(parts.settings.outbox_dir, ann_email)
    clock.set(again.request_time.ToDatetime(UTC) + timedelta(days=14))
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await gateway.CancelDeletion(ipb.CancelDeletionRequest(token=late))
    assert reason(expired.value) == invalid
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.Login(ipb.LoginRequest(email=ann_email, password=PASSWORD))


async def test_the_erasure_certificate_is_mailed_to_the_accounts_address(identity, dial):
    ann, ann_email = await everything_of(identity, "ann")
    certificate = json.dumps({"case_id": "case-1", "subject_ref": "f00d", "participants": []})
    retention = dial("retention")
    await retention.SendErasureCertificate(
        ipb.SendErasureCertificateRequest(account_id=ann, case_id="case-1", certificate=certificate)
    )
    outbox = identity.parts.settings.outbox_dir
    mails = [
        message_from_bytes(p.read_bytes(), policy=policy.default) for p in outbox.glob("*.eml")
    ]
    (mail,) = [m for m in mails if "erased" in m["Subject"]]
    assert mail["To"] == ann_email
    (attachment,) = list(mail.iter_attachments())
    assert attachment.get_filename() == "erasure-certificate-case-1.json"
    assert json.loads(attachment.get_content()) == json.loads(certificate)
    for request, expected in (
        (ipb.SendErasureCertificateRequest(account_id=str(uuid.uuid4()), case_id="c",
                                           certificate="{}"),
         (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")),
        (ipb.SendErasureCertificateRequest(account_id=ann, case_id="c", certificate="not json"),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CERTIFICATE")),
    ):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await retention.SendErasureCertificate(request)
        assert reason(refused.value) == expected


# Who may call what, written out here rather than read from the code's table.
EXPECTED = {
    ("identity", "CancelDeletion"): {"gateway"},
    ("identity", "SendErasureCertificate"): {"retention"},
    ("participant", "ListPolicies"): {"retention"},
    ("participant", "Purge"): {"retention"},
    ("participant", "EraseSubject"): {"retention"},
    ("participant", "ExportSubject"): {"retention", "gateway"},
}
CALLERS = ("gateway", "vault", "runner", "retention", "operator")


async def attempt(dial, caller: str, service: str, method: str):
    """The call's error code, or None when the caller got past the caller table."""
    if service == "identity":
        stub, request = dial(caller), getattr(ipb, f"{method}Request")()
    else:
        stub, request = participant(dial, caller), getattr(rpb, f"{method}Request")()
    try:
        if method == "ExportSubject":
            async for _ in stub.ExportSubject(request):
                pass
        else:
            await getattr(stub, method)(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.PERMISSION_DENIED:
            assert from_rpc_error(error).reason == "CALLER_NOT_ALLOWED"
            return "denied"
    return None


@pytest.mark.parametrize("caller", CALLERS)
async def test_caller_matrix_of_the_new_rpcs(identity, dial, caller: str):
    for (service, method), allowed in EXPECTED.items():
        outcome = await attempt(dial, caller, service, method)
        assert (outcome == "denied") == (caller not in allowed), (caller, method)
