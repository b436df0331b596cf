"""Identity over real sockets with mTLS: who may call what, and errors as callers see them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from leadmesh.identity.v1 import identity_pb2 as pb
from leadmesh.identity.v1 import identity_pb2_grpc

from services.identity.api import ALLOWED_CALLERS, SERVICE
from services.identity.server import RunningIdentity, migrate_database, start
from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.errors import from_rpc_error
from services.kit.grpcclient import open_channel
from services.kit.pki import load_mesh_certificate
from tests.integration.grpc_support import call, refused
from tests.integration.identity_support import PASSWORD, identity_settings

METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["IdentityService"].methods]
CALLERS = ("gateway", "vault", "runner", "retention", "operator")


@pytest.fixture
async def identity(mesh: MeshSettings, database_url: str) -> AsyncIterator[RunningIdentity]:
    """Identity serving on port 0, on a fresh SQLite file and a fresh PostgreSQL database."""
    settings = identity_settings(mesh.var_dir, database_url)
    migrate_database(settings)
    running = await start(settings, port=0)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def dial(identity: RunningIdentity, mesh: MeshSettings):
    there = mesh.model_copy(update={"identity_addr": f"127.0.0.1:{identity.port}"})
    opened: list[grpc.aio.Channel] = []

    def open_as(caller: str) -> identity_pb2_grpc.IdentityServiceStub:
        channel = open_channel(there, "identity", caller=caller)
        opened.append(channel)
        return identity_pb2_grpc.IdentityServiceStub(channel)

    yield open_as
    for channel in opened:
        await channel.close()


SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["IdentityService"]


async def _call(stub, method: str, request=None, **kwargs):
    return await call(stub, SERVICE_DESCRIPTOR, method, request, **kwargs)


def test_the_table_names_every_rpc():
    assert sorted(m.rsplit("/", 1)[1] for m in ALLOWED_CALLERS) == sorted(METHODS)


@pytest.mark.parametrize("caller", CALLERS)
async def test_caller_matrix_over_every_rpc(dial, caller: str):
    stub = dial(caller)
    for method in METHODS:
        allowed = caller in ALLOWED_CALLERS[f"/{SERVICE}/{method}"]
        error = await _call(stub, method)
        denied = refused(error, grpc.StatusCode.PERMISSION_DENIED)
        assert denied != allowed, (caller, method, error)
        if denied:
            assert from_rpc_error(error).reason == "CALLER_NOT_ALLOWED"


async def test_a_caller_without_a_mesh_certificate_cannot_connect(
    identity: RunningIdentity, mesh: MeshSettings
):
    ca = load_mesh_certificate(mesh.pki_dir, "gateway").ca_pem
    address = f"127.0.0.1:{identity.port}"
    options = [("grpc.ssl_target_name_override", "identity")]
    no_cert = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca), options=options)
    plaintext = grpc.aio.insecure_channel(address)
    for channel in (no_cert, plaintext):
        async with channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            error = await _call(stub, "Login")
            assert refused(error, grpc.StatusCode.UNAVAILABLE)


async def test_health_is_open_to_every_mesh_member(identity: RunningIdentity, mesh: MeshSettings):
    there = mesh.model_copy(update={"identity_addr": f"127.0.0.1:{identity.port}"})
    async with open_channel(there, "identity", caller="runner") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_only_the_gateway_may_act_for_a_user(dial):
    stub = dial("gateway")
    account = await stub.CreateAccount(
        pb.CreateAccountRequest(email="u@example.com", password=PASSWORD)
    )
    mine = await stub.GetAccount(pb.GetAccountRequest(), metadata=user_metadata(account.id))
    assert mine.id == account.id and mine.email == "u@example.com"
    missing = await _call(stub, "GetAccount")
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert from_rpc_error(missing).reason == "USER_CONTEXT_MISSING"
    forged = await _call(dial("operator"), "SendAnnouncement", metadata=user_metadata(account.id))
    assert forged.code() == grpc.StatusCode.PERMISSION_DENIED
    assert from_rpc_error(forged).reason == "USER_CONTEXT_NOT_TRUSTED"


async def test_errors_carry_reason_field_and_retry_delay(dial):
    stub = dial("gateway")
    try:
        await stub.CreateAccount(pb.CreateAccountRequest(email="v@example.com", password="Tiny7!"))
    except grpc.aio.AioRpcError as error:
        remote = from_rpc_error(error)
    assert remote.code == grpc.StatusCode.INVALID_ARGUMENT
    assert remote.reason == "PASSWORD_TOO_SHORT"
    assert [v.field for v in remote.violations] == ["password"]
    assert "Tiny7!" not in remote.message

    await stub.CreateAccount(pb.CreateAccountRequest(email="w@example.com", password=PASSWORD))
    wrong = pb.LoginRequest(email="w@example.com", password="not the one", ip_address="192.0.2.5")
    for _ in range(10):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Login(wrong)
    try:
        await stub.Login(wrong)
    except grpc.aio.AioRpcError as error:
        remote = from_rpc_error(error)
    assert remote.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert remote.reason == "LOGIN_THROTTLED" and 0 < remote.retry_after <= 900


async def test_the_operator_announces(dial):
    gateway, operator = dial("gateway"), dial("operator")
    account = await gateway.CreateAccount(
        pb.CreateAccountRequest(email="news@example.com", password=PASSWORD)
    )
    await gateway.UpdateConsents(
        pb.UpdateConsentsRequest(
            changes=[pb.ConsentChange(purpose=pb.PURPOSE_NEW_FEATURES, granted=True)]
        ),
        metadata=user_metadata(account.id),
    )
    reply = await operator.SendAnnouncement(
        pb.SendAnnouncementRequest(purpose=pb.PURPOSE_NEW_FEATURES, subject="Hi", body="News.")
    )
    assert reply.recipient_count >= 1
    unknown = await _call(operator, "SendAnnouncement")
    assert from_rpc_error(unknown).reason == "UNKNOWN_PURPOSE"


async def test_plaintext_only_when_asked_for_explicitly(mesh: MeshSettings, tmp_path):
    """LEADMESH_INSECURE_INTERNAL=1 (development): plaintext, the caller names itself, and the
    table of allowed callers still holds."""
    insecure = mesh.model_copy(update={"insecure_internal": True})
    settings = identity_settings(mesh.var_dir, f"sqlite:///{tmp_path / 'plain.db'}")
    settings = settings.model_copy(update={"mesh": insecure})
    migrate_database(settings)
    running = await start(settings, port=0)
    try:
        there = insecure.model_copy(update={"identity_addr": f"127.0.0.1:{running.port}"})
        async with open_channel(there, "identity", caller="gateway") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            account = await stub.CreateAccount(
                pb.CreateAccountRequest(email="plain@example.com", password=PASSWORD)
            )
            assert account.id
        async with open_channel(there, "identity", caller="runner") as channel:
            error = await _call(identity_pb2_grpc.IdentityServiceStub(channel), "Login")
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.stop(grace=1)


def test_internal_traffic_is_secure_by_default(monkeypatch):
    monkeypatch.delenv("LEADMESH_INSECURE_INTERNAL", raising=False)
    assert MeshSettings(_env_file=None).insecure_internal is False


async def test_the_terms_are_the_operators_plans_cheapest_first_and_deletion_periods(
    mesh: MeshSettings, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    # As an operator writes them in the environment (docs/OPERATIONS.md).
    monkeypatch.setenv(
        "IDENTITY_PLANS",
        '{"team": {"amount": 4900, "currency": "USD"}, "free": {"amount": 0},'
        ' "solo": {"amount": 900, "currency": "USD"}}',
    )
    monkeypatch.setenv("IDENTITY_DELETION_GRACE_DAYS", "7")
    settings = identity_settings(mesh.var_dir, database_url)
    migrate_database(settings)
    running = await start(settings, port=0)
    there = mesh.model_copy(update={"identity_addr": f"127.0.0.1:{running.port}"})
    try:
        async with open_channel(there, "identity", caller="gateway") as channel:
            terms = await identity_pb2_grpc.IdentityServiceStub(channel).GetTerms(
                pb.GetTermsRequest()
            )
    finally:
        await running.stop(grace=1)
    assert [(p.name, p.amount, p.currency) for p in terms.plans] == [
        ("free", 0, "EUR"),
        ("solo", 900, "USD"),
        ("team", 4900, "USD"),
    ]
    assert (terms.deletion_grace_days, terms.erase_after_days) == (7, 60)
