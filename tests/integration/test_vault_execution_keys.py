"""The vault's execution keys over real sockets with mTLS, on a real SQLite file and a real
PostgreSQL: who may ask for, destroy and list them; a derived key that stays the same across calls
and a KEK rotation, and is another for every participant, user, category and day; days destroyed
for good (also from the database's files); erasure; twenty first uses racing to one key; keys
answered counted by caller and state, never by user."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from leadmesh.retention.v1 import retention_pb2 as rpb
from leadmesh.retention.v1 import retention_pb2_grpc
from leadmesh.vault.v1 import vault_pb2 as pb
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import select

from services.kit.errors import from_rpc_error
from services.vault import execution_keys
from services.vault.server import RunningVault
from services.vault.tables import epoch_keys, owner_keys
from tests.integration import vault_support
from tests.integration.grpc_support import call, refused

# The served vault's fixtures (SQLite and PostgreSQL: `database_url`).
vault_var, served_vault, dial_vault = (
    vault_support.vault_var,
    vault_support.served_vault,
    vault_support.dial_vault,
)

SERVICE = pb.DESCRIPTOR.services_by_name["VaultService"]
CALLERS = ("gateway", "identity", "runner", "retention", "operator")
# Written out, not read from ALLOWED_CALLERS: a test that took it from the code could not catch a
# wrong grant there.
EXPECTED = {
    "GetExecutionKeys": {"runner", "identity"},
    "DestroyExpiredEpochKeys": {"retention"},
    "ListEpochKeys": {"retention", "operator"},
}
ACTIVE = pb.EXECUTION_KEY_STATE_ACTIVE
DESTROYED = pb.EXECUTION_KEY_STATE_DESTROYED
ABSENT = pb.EXECUTION_KEY_STATE_ABSENT
ANN, BOB = "user-ann", "user-bob"
DAY = "2026-12-03"


async def keys(stub, user: str, refs: list[tuple[str, str]], create: bool = True) -> list:
    request = pb.GetExecutionKeysRequest(
        user_id=user,
        keys=[pb.ExecutionKeyRef(category=c, day=d) for c, d in refs],
        create=create,
    )
    return list((await stub.GetExecutionKeys(request)).keys)


async def key(stub, user: str, category: str, day: str, create: bool = True) -> bytes:
    [answer] = await keys(stub, user, [(category, day)], create)
    assert answer.state == ACTIVE, answer.state
    assert len(answer.key) == 32
    return answer.key


async def destroy(dial_vault, category: str, before: str, participant="runner", dry_run=False):
    request = pb.DestroyExpiredEpochKeysRequest(
        participant=participant, category=category, before=before, dry_run=dry_run
    )
    return await dial_vault("retention").DestroyExpiredEpochKeys(request)


async def listed(dial_vault) -> dict[tuple[str, str], tuple[int, str, str]]:
    reply = await dial_vault("operator").ListEpochKeys(pb.ListEpochKeysRequest())
    return {
        (c.participant, c.category): (c.keys, c.oldest_day, c.destroyed_before)
        for c in reply.categories
    }


@pytest.mark.parametrize("caller", CALLERS)
async def test_caller_matrix_of_the_execution_key_rpcs(dial_vault, caller: str):
    stub = dial_vault(caller)
    for method, allowed in EXPECTED.items():
        outcome = await call(stub, SERVICE, method)
        denied = refused(outcome, grpc.StatusCode.PERMISSION_DENIED)
        assert denied != (caller in allowed), (caller, method, outcome)
        if denied:
            assert from_rpc_error(outcome).reason == "CALLER_NOT_ALLOWED"


async def test_requests_are_checked(dial_vault):
    runner = dial_vault("runner")
    cases = [
        ("", [("webhooks_log", DAY)], "USER_ID_REQUIRED"),
        (ANN, [("webhooks_log", "2026-13-01")], "INVALID_DAY"),
        (ANN, [("webhooks_log", "20261203")], "INVALID_DAY"),
        (ANN, [("Webhooks", DAY)], "INVALID_CATEGORY"),
        (ANN, [("a|b", DAY)], "INVALID_CATEGORY"),
        (ANN, [("x" * 65, DAY)], "INVALID_CATEGORY"),
        (ANN, [("webhooks_log", f"2026-01-{d:02}") for d in range(1, 31)] * 3, "TOO_MANY_KEYS"),
    ]
    for user, refs, expected in cases:
        request = pb.GetExecutionKeysRequest(
            user_id=user, keys=[pb.ExecutionKeyRef(category=c, day=d) for c, d in refs]
        )
        outcome = await call(runner, SERVICE, "GetExecutionKeys", request)
        assert refused(outcome, grpc.StatusCode.INVALID_ARGUMENT), (expected, outcome)
        assert from_rpc_error(outcome).reason == expected
    for before in ("", "yesterday"):
        request = pb.DestroyExpiredEpochKeysRequest(
            participant="runner", category="webhooks_log", before=before
        )
        outcome = await call(dial_vault("retention"), SERVICE, "DestroyExpiredEpochKeys", request)
        assert from_rpc_error(outcome).reason == "INVALID_DAY"


async def test_a_key_is_its_participants_users_categorys_and_days_own(dial_vault):
    runner, identity = dial_vault("runner"), dial_vault("identity")
    first = await key(runner, ANN, "webhooks_log", DAY)
    assert await key(runner, ANN, "webhooks_log", DAY, create=False) == first  # stable
    others = {
        await key(identity, ANN, "webhooks_log", DAY),  # another participant's category
        await key(runner, BOB, "webhooks_log", DAY),
        await key(runner, ANN, "run_events", DAY),
        await key(runner, ANN, "webhooks_log", "2026-12-04"),
    }
    assert first not in others and len(others) == 4
    # Never made, and not made without `create`: absent.
    [absent] = await keys(runner, ANN, [("webhooks_log", "2026-12-05")], create=False)
    assert absent.state == ABSENT and absent.key == b""
    # Answered in the order asked, a pair asked twice answered twice.
    refs = [("run_events", DAY), ("webhooks_log", DAY), ("run_events", DAY)]
    answers = await keys(runner, ANN, refs, create=False)
    assert [(a.category, a.day) for a in answers] == refs
    assert answers[1].key == first and answers[0].key == answers[2].key != first


async def test_a_key_outlives_a_kek_rotation_and_the_old_versions_retirement(dial_vault):
    runner, operator = dial_vault("runner"), dial_vault("operator")
    before = {day: await key(runner, ANN, "webhooks_log", day) for day in ("2026-12-01", DAY)}
    status = await operator.GetKeyStatus(pb.GetKeyStatusRequest())
    # The owner key and both day keys are wrapped keys like any data key.
    assert {v.version: v.data_key_count for v in status.versions} == {"v1": 3}
    await operator.BeginKeyRotation(pb.BeginKeyRotationRequest())
    assert (await operator.GetKeyStatus(pb.GetKeyStatusRequest())).pending == 3
    retire = pb.RetireKeyVersionRequest(version="v1")
    in_use = await call(operator, SERVICE, "RetireKeyVersion", retire)
    assert from_rpc_error(in_use).reason == "KEY_VERSION_IN_USE"
    rewrapped = await operator.RewrapDataKeys(pb.RewrapDataKeysRequest(batch_size=2))
    assert (rewrapped.rewrapped, rewrapped.remaining) == (2, 1)
    rewrapped = await operator.RewrapDataKeys(pb.RewrapDataKeysRequest(batch_size=2))
    assert (rewrapped.rewrapped, rewrapped.remaining) == (1, 0)
    status = await operator.RetireKeyVersion(retire)
    assert [v.version for v in status.versions] == ["v2"] and status.pending == 0
    for day, derived in before.items():
        assert await key(runner, ANN, "webhooks_log", day, create=False) == derived


async def test_a_destroyed_day_is_never_made_again(dial_vault):
    runner = dial_vault("runner")
    days = ["2026-11-25", "2026-11-26", "2026-11-27", DAY]
    made = {day: await key(runner, ANN, "webhooks_log", day) for day in days}
    other = await key(runner, ANN, "run_events", "2026-11-25")

    dry = await destroy(dial_vault, "webhooks_log", "2026-11-27", dry_run=True)
    assert (dry.keys_destroyed, dry.oldest_day) == (2, "2026-11-27")
    assert await key(runner, ANN, "webhooks_log", "2026-11-25", create=False) == made["2026-11-25"]

    done = await destroy(dial_vault, "webhooks_log", "2026-11-27")
    assert (done.keys_destroyed, done.oldest_day) == (2, "2026-11-27")
    refs = [("webhooks_log", d) for d in ("2026-11-25", "2026-11-26", "2026-11-01")]
    for create in (True, False):
        answers = await keys(runner, ANN, refs, create=create)
        assert [a.state for a in answers] == [DESTROYED] * 3 and not any(a.key for a in answers)
    # Another user's key of a destroyed day is destroyed too: the day's half is gone.
    [bobs] = await keys(runner, BOB, [("webhooks_log", "2026-11-26")])
    assert bobs.state == DESTROYED
    # The days after, the other category and the other participant are untouched.
    assert await key(runner, ANN, "webhooks_log", "2026-11-27", create=False) == made["2026-11-27"]
    assert await key(runner, ANN, "run_events", "2026-11-25", create=False) == other
    assert await key(dial_vault("identity"), ANN, "webhooks_log", "2026-11-25")

    again = await destroy(dial_vault, "webhooks_log", "2026-11-27")  # idempotent
    assert (again.keys_destroyed, again.oldest_day) == (0, "2026-11-27")
    back = await destroy(dial_vault, "webhooks_log", "2026-11-20")  # never moves back
    assert back.keys_destroyed == 0
    [still] = await keys(runner, ANN, [("webhooks_log", "2026-11-26")])
    assert still.state == DESTROYED
    assert (await listed(dial_vault)) == {
        ("identity", "webhooks_log"): (1, "2026-11-25", ""),
        ("runner", "run_events"): (1, "2026-11-25", ""),
        ("runner", "webhooks_log"): (2, "2026-11-27", "2026-11-27"),
    }
    # A category never used: its horizon holds from before its first key.
    await destroy(dial_vault, "login_history", "2026-11-01", participant="identity")
    [early] = await keys(dial_vault("identity"), ANN, [("login_history", "2026-10-31")])
    assert early.state == DESTROYED
    assert (await listed(dial_vault))[("identity", "login_history")] == (0, "", "2026-11-01")


async def test_an_erasure_destroys_the_users_keys_for_good(dial_vault):
    runner, identity = dial_vault("runner"), dial_vault("identity")
    anns = [await key(runner, ANN, "webhooks_log", DAY), await key(identity, ANN, "logins", DAY)]
    bobs = await key(runner, BOB, "webhooks_log", DAY)

    shred = await dial_vault("operator").ShredUserKey(pb.ShredUserKeyRequest(user_id=ANN))
    assert shred.key_destroyed
    for stub, category in ((runner, "webhooks_log"), (identity, "logins")):
        [gone] = await keys(stub, ANN, [(category, DAY)], create=False)
        assert gone.state == ABSENT and gone.key == b""
    # A key made afresh is another key: nothing sealed before opens with it.
    assert await key(runner, ANN, "webhooks_log", DAY) not in anns
    assert await key(runner, BOB, "webhooks_log", DAY, create=False) == bobs

    # Retention's erasure case shreds the owner key too, and says so in its certificate.
    participant = dial_vault("retention", retention_pb2_grpc.RetentionParticipantStub)
    reply = await participant.EraseSubject(rpb.EraseSubjectRequest(user_id=BOB, case_id="c"))
    assert {c.category: c.rows_erased for c in reply.categories}["owner_keys"] == 1
    [erased] = await keys(runner, BOB, [("webhooks_log", DAY)], create=False)
    assert erased.state == ABSENT
    assert await key(runner, BOB, "webhooks_log", DAY) != bobs


async def test_twenty_first_uses_at_once_get_one_key(dial_vault, served_vault: RunningVault):
    stubs = [dial_vault("runner") for _ in range(4)]
    answers = await asyncio.gather(
        *(key(stubs[n % 4], "user-new", "webhooks_log", DAY) for n in range(20))
    )
    assert len(set(answers)) == 1
    async with served_vault.parts.store.database.read() as connection:
        made = (await connection.execute(select(epoch_keys.c.day))).all()
        owners = (await connection.execute(select(owner_keys.c.user_id))).all()
    assert len(made) == 1 and len(owners) == 1


async def test_a_destroyed_key_leaves_the_database_files(
    dial_vault, served_vault: RunningVault, database_url: str
):
    if not database_url.startswith("sqlite"):
        pytest.skip("the files of an SQLite database")
    runner = dial_vault("runner")
    # Enough keys, interleaved by category, that the table's pages split and rebalance.
    days = [f"2026-{m:02}-{d:02}" for m in (9, 10, 11) for d in range(1, 29)]
    for category in ("webhooks_log", "run_events", "attempts"):
        for start in range(0, len(days), 64):
            await keys(runner, ANN, [(category, d) for d in days[start : start + 64]])
    async with served_vault.parts.store.database.read() as connection:
        wrapped = (
            await connection.execute(
                select(epoch_keys.c.wrapped_key).where(
                    epoch_keys.c.category == "run_events", epoch_keys.c.day < "2026-11-01"
                )
            )
        ).all()
    assert len(wrapped) == 56
    done = await destroy(dial_vault, "run_events", "2026-11-01")
    assert done.keys_destroyed == 56
    database = Path(database_url.removeprefix("sqlite:///"))
    files = list(database.parent.glob(f"{database.name}*"))
    assert files
    for path in files:
        content = path.read_bytes()
        for (key_bytes,) in wrapped:
            assert key_bytes not in content, path.name
    # The keys kept still open.
    [kept] = await keys(runner, ANN, [("run_events", "2026-11-01")], create=False)
    assert kept.state == ACTIVE


async def test_keys_answered_are_counted_by_caller_and_state(dial_vault, monkeypatch):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # The process's global provider is whichever test set it first: this one counts into its own.
    monkeypatch.setattr(execution_keys, "_served", provider.get_meter("t").create_counter("k"))
    runner = dial_vault("runner")
    await keys(runner, ANN, [("webhooks_log", DAY), ("webhooks_log", "2026-12-04")])
    await keys(runner, ANN, [("webhooks_log", "2026-12-05")], create=False)
    await destroy(dial_vault, "webhooks_log", DAY)
    await keys(dial_vault("identity"), ANN, [("webhooks_log", "2026-12-01")])
    await keys(runner, ANN, [("webhooks_log", "2026-12-01")])
    await call(runner, SERVICE, "GetExecutionKeys", pb.GetExecutionKeysRequest(user_id=ANN, keys=[
        pb.ExecutionKeyRef(category="Bad", day=DAY)
    ]))  # fmt: skip
    points = {
        tuple(sorted(p.attributes.items())): p.value
        for m in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        for p in m.data.data_points
    }
    provider.shutdown()
    assert points == {
        (("outcome", "active"), ("participant", "runner")): 2,
        (("outcome", "absent"), ("participant", "runner")): 1,
        (("outcome", "active"), ("participant", "identity")): 1,
        (("outcome", "destroyed"), ("participant", "runner")): 1,
        (("outcome", "INVALID_CATEGORY"), ("participant", "runner")): 1,
    }
    assert ANN not in str(points)


async def test_a_destruction_racing_first_uses_leaves_no_key_of_the_day(
    dial_vault, served_vault: RunningVault
):
    stubs = [dial_vault("runner") for _ in range(4)]
    users = [f"user-{n}" for n in range(12)]
    day = "2026-11-30"
    racing = [keys(stubs[n % 4], user, [("webhooks_log", day)]) for n, user in enumerate(users)]
    racing.insert(6, destroy(dial_vault, "webhooks_log", DAY))
    await asyncio.gather(*racing)
    for user in users:  # whoever got a key before the destruction, nobody has one after it
        [answer] = await keys(stubs[0], user, [("webhooks_log", day)])
        assert answer.state == DESTROYED
    async with served_vault.parts.store.database.read() as connection:
        assert (await connection.execute(select(epoch_keys.c.day))).all() == []
