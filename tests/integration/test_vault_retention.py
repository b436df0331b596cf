"""The vault as a retention participant, served over real sockets with mTLS on a real SQLite file
and a real PostgreSQL, time moved by hand: its timed categories purged exactly at their limit, an
erasure that crypto-shreds (a copy of the database taken before it no longer opens the user's
credentials), an export without a secret, and who may call what."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from leadmesh.retention.v1 import retention_pb2 as rpb
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc
from sqlalchemy import delete, insert, select

from services.kit.callers import user_metadata
from services.kit.clock import SettableClock
from services.kit.config import MeshSettings
from services.kit.db import create_service_engine
from services.kit.errors import FailedPrecondition, from_rpc_error
from services.kit.grpcclient import open_channel
from services.kit.timestamps import put_timestamp
from services.vault.api import credential_pb
from services.vault.keyadmin import SYSTEM_OWNER
from services.vault.keys import Tampered, secret_aad, unseal
from services.vault.resolve import SealedCredentials
from services.vault.sealcache import SealedRows
from services.vault.server import RunningVault, migrate_database, start
from services.vault.store import Store
from services.vault.tables import (
    audit_events,
    credentials,
    leases,
    metadata,
    oauth_states,
    user_keys,
)
from tests.integration.vault_support import API_KEY, OAUTH2, secret_values, vault_settings

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
ANN, BOB = "user-ann", "user-bob"


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(NOW)


@pytest.fixture
async def vault(
    tmp_path: Path, mesh: MeshSettings, database_url: str, clock: SettableClock
) -> AsyncIterator[RunningVault]:
    shutil.copytree(mesh.pki_dir, tmp_path / "pki")
    settings = vault_settings(tmp_path, database_url)
    migrate_database(settings)
    running = await start(settings, clock=clock, port=0)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def dial(vault: RunningVault, tmp_path: Path):
    there = MeshSettings(var_dir=tmp_path, vault_addr=f"127.0.0.1:{vault.port}", _env_file=None)
    opened: list[grpc.aio.Channel] = []

    def open_as(caller: str, stub=vault_pb2_grpc.VaultServiceStub):
        channel = open_channel(there, "vault", caller=caller)
        opened.append(channel)
        return stub(channel)

    yield open_as
    for channel in opened:
        await channel.close()


def participant(dial, caller: str = "retention"):
    return dial(caller, retention_pb2_grpc.RetentionParticipantStub)


def reason(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), from_rpc_error(error).reason


async def rows(vault: RunningVault, table) -> list[dict]:
    async with vault.parts.store.database.read() as connection:
        return [dict(r._mapping) for r in await connection.execute(select(table))]


async def add(vault: RunningVault, table, values: list[dict]) -> None:
    async with vault.parts.store.database.write() as connection:
        await connection.execute(insert(table), values)


def around(limit: datetime) -> list[datetime]:
    return [limit - SECOND, limit, limit + SECOND]


async def purge(dial, category: str, cutoff: datetime) -> rpb.PurgeResponse:
    request = rpb.PurgeRequest(category=category)
    put_timestamp(request.cutoff, cutoff)
    return await participant(dial).Purge(request)


async def test_every_timed_category_is_purged_exactly_at_its_limit(vault, dial):
    cutoff = {
        "audit_log": NOW - timedelta(days=90),
        "oauth_states": NOW - timedelta(days=1),
        "refresh_leases": NOW - timedelta(days=1),
    }
    await add(vault, audit_events, [
        {"event_time": when, "caller": "runner", "user_id": ANN, "credential_id": None,
         "connection_id": "c-1", "action": "resolve", "outcome": "ok"}
        for when in around(cutoff["audit_log"])
    ])  # fmt: skip
    await add(vault, oauth_states, [
        {"state_sha256": f"{n:064d}", "user_id": ANN, "session_sha256": "s" * 64,
         "provider": "crm", "name": "CRM", "verifier": b"sealed", "expire_time": when}
        for n, when in enumerate(around(cutoff["oauth_states"]))
    ])  # fmt: skip
    await add(vault, leases, [
        {"name": f"refresh:{n}", "holder": "crashed", "expire_time": when}
        for n, when in enumerate(around(cutoff["refresh_leases"]))
    ])  # fmt: skip
    request = rpb.ListPoliciesRequest()
    put_timestamp(request.as_of, NOW)
    listed = {p.category: p for p in (await participant(dial).ListPolicies(request)).policies}
    tables = {"audit_log": (audit_events, "event_time"),
              "oauth_states": (oauth_states, "expire_time"),
              "refresh_leases": (leases, "expire_time")}  # fmt: skip
    for category, (table, column) in tables.items():
        assert listed[category].expired_rows == 1, category
        done = await purge(dial, category, cutoff[category])
        assert (done.rows_deleted, done.rows_still_expired) == (1, 0), category
        kept = sorted(r[column].replace(tzinfo=UTC) for r in await rows(vault, table))
        assert kept == around(cutoff[category])[1:], category
    for kept_until_erasure in ("credentials", "data_keys", "suspensions"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await purge(dial, kept_until_erasure, NOW)
        assert reason(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_PURGEABLE")


async def create(dial, user: str, kind: int, values: dict) -> vpb.Credential:
    secret = struct_pb2.Struct()
    secret.update(values)
    request = vpb.CreateCredentialRequest(name="CRM", kind=kind, provider="crm", secret=secret)
    return await dial("gateway").CreateCredential(request, metadata=user_metadata(user))


async def resolve(dial, user: str, credential_id: str) -> vpb.ResolvedCredential:
    return await dial("runner").ResolveCredential(
        vpb.ResolveCredentialRequest(user_id=user, credential_id=credential_id, connection_id="c")
    )


async def everything_of(vault: RunningVault, dial, user: str) -> list[str]:
    """Two credentials (used: audit events), an OAuth state under way; their ids."""
    made = [
        (await create(dial, user, vpb.CREDENTIAL_KIND_API_KEY, API_KEY)).id,
        (await create(dial, user, vpb.CREDENTIAL_KIND_OAUTH2, OAUTH2)).id,
    ]
    await resolve(dial, user, made[0])
    await add(vault, oauth_states, [
        {"state_sha256": f"{user:0>64}"[-64:], "user_id": user, "session_sha256": "s" * 64,
         "provider": "crm", "name": "CRM", "verifier": b"sealed",
         "expire_time": NOW + timedelta(minutes=10)},
    ])  # fmt: skip
    await vault.parts.audit.flush()
    return made


async def every_row(vault: RunningVault) -> str:
    dumped = []
    for table in metadata.sorted_tables:
        dumped += [json.dumps(r, default=str) for r in await rows(vault, table)]
    return "\n".join(dumped)


def backup(database_url: str, into: Path) -> str:
    """A consistent copy of the SQLite database file (what a backup would hold); its URL."""
    source = sqlite3.connect(database_url.removeprefix("sqlite:///"))
    target = sqlite3.connect(into)
    with target:
        source.backup(target)
    source.close()
    target.close()
    return f"sqlite:///{into}"


async def open_from_copy(vault: RunningVault, copy_url: str, user: str, credential_id: str):
    """The vault's own resolve path over the copy, its key table replaced by the live one: what
    a backup of the credentials yields with the KEKs and whatever keys remain."""
    engine = create_service_engine(copy_url)
    store = Store(engine)
    live = await rows(vault, user_keys)
    try:
        async with store.begin() as tx:
            await tx.c.execute(delete(user_keys))
            if live:
                await tx.c.execute(insert(user_keys), live)
        opened = SealedCredentials(
            store, vault.parts.data_keys, SealedRows(enabled=False), render=credential_pb
        )
        return (await opened.open(user, credential_id)).secret
    finally:
        await engine.dispose()


async def test_an_erasure_shreds_the_users_key_and_leaves_no_trace_of_them(
    vault, dial, database_url: str, tmp_path: Path
):
    ann_ids = await everything_of(vault, dial, ANN)
    bob_ids = await everything_of(vault, dial, BOB)
    await dial("gateway").SuspendUser(vpb.SuspendUserRequest(user_id=ANN))
    sqlite = database_url.startswith("sqlite")
    if sqlite:
        copy_url = backup(database_url, tmp_path / "copy.db")
        # The copy opens with the live keys before the erasure: the test can tell.
        assert (await open_from_copy(vault, copy_url, ANN, ann_ids[0]))["key"] == API_KEY["key"]
        copy_url = backup(database_url, tmp_path / "copy.db")

    reply = await participant(dial).EraseSubject(rpb.EraseSubjectRequest(user_id=ANN, case_id="c"))

    outcome = {c.category: (c.rows_erased, c.rows_kept) for c in reply.categories}
    # The shred deletes the key, the credentials and the OAuth state first (audited); then the
    # rest goes, the audit trail included: create ×2, resolve, shred.
    assert outcome == {"credentials": (2, 0), "oauth_states": (1, 0), "audit_log": (4, 0),
                       "suspensions": (1, 0), "data_keys": (1, 0),
                       "owner_keys": (0, 0)}  # fmt: skip
    after = await every_row(vault)
    assert ANN not in after and not any(i in after for i in ann_ids)
    assert BOB in after and all(i in after for i in bob_ids)
    again = await participant(dial).EraseSubject(rpb.EraseSubjectRequest(user_id=ANN))
    assert all(c.rows_erased == 0 for c in again.categories)
    if sqlite:
        await copy_cannot_open(vault, database_url, copy_url, ann_ids[0])
    # Still refused (identity lists Ann until it erases her, last), and Bob's work goes on.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await resolve(dial, ANN, ann_ids[0])
    assert reason(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_DELETED")
    assert (await resolve(dial, BOB, bob_ids[0])).secret["key"] == API_KEY["key"]


async def copy_cannot_open(
    vault: RunningVault, database_url: str, copy_url: str, credential_id: str
) -> None:
    # The copy taken before still holds Ann's ciphertext, but no key that remains opens it:
    # the vault's own path finds her data key destroyed, and no live data key authenticates it.
    with pytest.raises(FailedPrecondition) as destroyed:
        await open_from_copy(vault, copy_url, ANN, credential_id)
    assert destroyed.value.reason == "KEY_DESTROYED"
    copied = sqlite3.connect(copy_url.removeprefix("sqlite:///"))
    secret, kind, version = copied.execute(
        "SELECT secret, kind, format_version FROM credentials WHERE id = ?", (credential_id,)
    ).fetchone()
    copied.close()
    aad = secret_aad(ANN, credential_id, kind, version)
    live = await rows(vault, user_keys)
    assert {r["user_id"] for r in live} == {BOB}
    for row in live:
        key = vault.parts.data_keys.unwrap(row["user_id"], row["kek_version"], row["wrapped_key"])
        with pytest.raises(Tampered):
            unseal(key, secret, aad)
    # And the live file holds none of it any more.
    database = Path(database_url.removeprefix("sqlite:///"))
    for path in database.parent.glob(f"{database.name}*"):
        assert ANN.encode() not in path.read_bytes(), path.name


async def test_the_vaults_own_owner_is_never_erased(vault, dial):
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await participant(dial).EraseSubject(rpb.EraseSubjectRequest(user_id=SYSTEM_OWNER))
    assert reason(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "NOT_A_USER")


async def test_the_export_lists_the_users_credentials_without_a_secret(vault, dial):
    ann_ids = await everything_of(vault, dial, ANN)
    bob_ids = await everything_of(vault, dial, BOB)
    stored = await rows(vault, credentials)
    for caller in ("gateway", "retention"):
        stub = participant(dial, caller)
        if caller == "gateway":
            stream = stub.ExportSubject(rpb.ExportSubjectRequest(), metadata=user_metadata(ANN))
        else:
            stream = stub.ExportSubject(rpb.ExportSubjectRequest(user_id=ANN))
        records = [(r.section, json.loads(r.json)) async for b in stream for r in b.records]
        exported = [r for s, r in records if s == "credentials"]
        assert sorted(r["id"] for r in exported) == sorted(ann_ids)
        assert set(exported[0]) == {
            "id", "name", "kind", "provider", "hint", "status", "scopes",
            "expire_time", "create_time", "update_time", "last_use_time",
        }  # fmt: skip
        audit = [r for s, r in records if s == "credential_audit_log"]
        assert {r["action"] for r in audit} == {"create", "resolve"}
        assert {s for s, _ in records} == {"credentials", "credential_audit_log"}
        text = json.dumps(records)
        assert BOB not in text and not any(i in text for i in bob_ids)
        for value in [*secret_values(API_KEY), *secret_values(OAUTH2)]:
            assert value not in text
        for row in stored:
            assert row["token_sha256"] is None or row["token_sha256"] not in text


EXPECTED = {
    "ListPolicies": {"retention"},
    "Purge": {"retention"},
    "EraseSubject": {"retention"},
    "ExportSubject": {"retention", "gateway"},
}
CALLERS = ("gateway", "identity", "runner", "retention", "operator")


@pytest.mark.parametrize("caller", CALLERS)
async def test_caller_matrix_of_the_participant_rpcs(vault, dial, caller: str):
    stub = participant(dial, caller)
    for method, allowed in EXPECTED.items():
        request = getattr(rpb, f"{method}Request")()
        denied = False
        try:
            if method == "ExportSubject":
                async for _ in stub.ExportSubject(request):
                    pass
            else:
                await getattr(stub, method)(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            denied = error.code() == grpc.StatusCode.PERMISSION_DENIED
            if denied:
                assert from_rpc_error(error).reason == "CALLER_NOT_ALLOWED"
        assert denied == (caller not in allowed), (caller, method)
