"""The vault over real sockets with mTLS: the caller matrix over every RPC, plaintext only to the
runner, and `leadmesh keys rotate` killed mid-way and resumed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from subprocess import PIPE

import grpc
import pytest
from google.protobuf import struct_pb2
from leadmesh.vault.v1 import vault_pb2 as pb
from leadmesh.vault.v1 import vault_pb2_grpc

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.errors import from_rpc_error
from services.kit.pki import load_mesh_certificate
from services.vault.api import ALLOWED_CALLERS
from services.vault.server import RunningVault
from tests.integration import vault_support
from tests.integration.grpc_support import call, refused
from tests.integration.vault_support import API_KEY, OAUTH2

METHODS = [m.name for m in pb.DESCRIPTOR.services_by_name["VaultService"].methods]
CALLERS = ("gateway", "identity", "runner", "retention", "operator")


# The vault on a free port over mTLS (vault_support's fixtures), and stubs calling it as a caller.
vault_var, served_vault, dial_vault = (
    vault_support.vault_var,
    vault_support.served_vault,
    vault_support.dial_vault,
)


@pytest.fixture
def vault(served_vault: RunningVault) -> RunningVault:
    return served_vault


@pytest.fixture
def dial(dial_vault):
    return dial_vault


SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["VaultService"]


async def _call(stub, method: str, request=None, **kwargs):
    return await call(stub, SERVICE_DESCRIPTOR, method, request, **kwargs)


# Who may call what, written out here rather than read from the code's table: a test that took
# its expectation from `ALLOWED_CALLERS` could never catch a wrong grant there.
EXPECTED_CALLERS = {
    "CreateCredential": {"gateway"},
    "GetCredential": {"gateway"},
    "ListCredentials": {"gateway"},
    "UpdateCredential": {"gateway"},
    "DeleteCredential": {"gateway"},
    "ListOAuthProviders": {"gateway"},
    "StartOAuth": {"gateway"},
    "CompleteOAuth": {"gateway"},
    "ResolveCredential": {"runner"},
    "RefreshOAuthCredential": {"runner"},
    "GetKeyStatus": {"operator"},
    "BeginKeyRotation": {"operator"},
    "RewrapDataKeys": {"operator"},
    "RetireKeyVersion": {"operator"},
    "RotateUserDataKey": {"operator"},
    "SetOAuthClientSecret": {"operator"},
    "ShredUserKey": {"operator", "retention"},
    "SuspendUser": {"gateway"},
    "GetExecutionKeys": {"runner", "identity"},
    "DestroyExpiredEpochKeys": {"retention"},
    "ListEpochKeys": {"retention", "operator"},
}


def test_the_table_grants_exactly_the_expected_callers():
    assert sorted(EXPECTED_CALLERS) == sorted(METHODS)
    assert {m.rsplit("/", 1)[1]: set(c) for m, c in ALLOWED_CALLERS.items()} == EXPECTED_CALLERS


@pytest.mark.parametrize("caller", CALLERS)
async def test_caller_matrix_over_every_rpc(dial, caller: str):
    stub = dial(caller)
    metadata = user_metadata("user-a") if caller == "gateway" else None
    for method in METHODS:
        allowed = caller in EXPECTED_CALLERS[method]
        outcome = await _call(stub, method, metadata=metadata)
        denied = refused(outcome, grpc.StatusCode.PERMISSION_DENIED)
        assert denied != allowed, (caller, method, outcome)
        if denied:
            assert from_rpc_error(outcome).reason == "CALLER_NOT_ALLOWED"


async def test_no_mesh_certificate_no_rpc(vault: RunningVault, mesh: MeshSettings):
    """TLS with the mesh CA but no client certificate, and plaintext: no RPC at all is served."""
    ca = load_mesh_certificate(mesh.pki_dir, "runner").ca_pem
    address = f"127.0.0.1:{vault.port}"
    options = [("grpc.ssl_target_name_override", "vault")]
    no_cert = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca), options=options)
    for channel in (no_cert, grpc.aio.insecure_channel(address)):
        async with channel:
            stub = vault_pb2_grpc.VaultServiceStub(channel)
            for method in METHODS:
                outcome = await _call(stub, method)
                assert refused(outcome, grpc.StatusCode.UNAVAILABLE), (method, outcome)


async def _create(gateway, user_id: str, kind: int, values: dict) -> pb.Credential:
    secret = struct_pb2.Struct()
    secret.update(values)
    request = pb.CreateCredentialRequest(name="CRM", kind=kind, provider="crm", secret=secret)
    return await gateway.CreateCredential(request, metadata=user_metadata(user_id))


async def test_only_the_runner_sees_plaintext_and_only_for_the_owner(dial):
    gateway, runner = dial("gateway"), dial("runner")
    created = await _create(gateway, "user-a", pb.CREDENTIAL_KIND_API_KEY, API_KEY)
    assert API_KEY["key"] not in str(created) and created.hint == "…6789"
    fetched = await gateway.GetCredential(
        pb.GetCredentialRequest(id=created.id), metadata=user_metadata("user-a")
    )
    assert API_KEY["key"] not in str(fetched)
    resolved = await runner.ResolveCredential(
        pb.ResolveCredentialRequest(user_id="user-a", credential_id=created.id, connection_id="c1")
    )
    assert dict(resolved.secret) == API_KEY
    other = await _call(
        runner,
        "ResolveCredential",
        pb.ResolveCredentialRequest(user_id="user-b", credential_id=created.id, connection_id="c"),
    )
    assert other.code() == grpc.StatusCode.NOT_FOUND
    assert from_rpc_error(other).reason == "CREDENTIAL_NOT_FOUND"
    forged = await _call(runner, "ResolveCredential", metadata=user_metadata("user-a"))
    assert from_rpc_error(forged).reason == "CALLER_NOT_ALLOWED" or (
        from_rpc_error(forged).reason == "USER_CONTEXT_NOT_TRUSTED"
    )


async def test_user_b_cannot_see_use_change_or_delete_user_a_credentials(dial):
    gateway, runner = dial("gateway"), dial("runner")
    mine, theirs = user_metadata("user-a"), user_metadata("user-b")
    created = await _create(gateway, "user-a", pb.CREDENTIAL_KIND_OAUTH2, OAUTH2)
    renamed = pb.UpdateCredentialRequest(id=created.id, name="taken")
    renamed.update_mask.paths.append("name")
    attempts = [
        (gateway, "GetCredential", pb.GetCredentialRequest(id=created.id), theirs),
        (gateway, "UpdateCredential", renamed, theirs),
        (gateway, "DeleteCredential", pb.DeleteCredentialRequest(id=created.id), theirs),
        (
            runner,
            "ResolveCredential",
            pb.ResolveCredentialRequest(user_id="user-b", credential_id=created.id),
            None,
        ),
        (
            runner,
            "RefreshOAuthCredential",
            pb.RefreshOAuthCredentialRequest(user_id="user-b", credential_id=created.id),
            None,
        ),
    ]
    for stub, method, request, metadata in attempts:
        outcome = await _call(stub, method, request, metadata=metadata)
        assert refused(outcome, grpc.StatusCode.NOT_FOUND), (method, outcome)
        assert from_rpc_error(outcome).reason == "CREDENTIAL_NOT_FOUND"
    listed = await gateway.ListCredentials(pb.ListCredentialsRequest(), metadata=theirs)
    assert list(listed.credentials) == []
    # A's credential is untouched by all of it.
    kept = await gateway.GetCredential(pb.GetCredentialRequest(id=created.id), metadata=mine)
    assert kept.name == "CRM"
    resolved = await runner.ResolveCredential(
        pb.ResolveCredentialRequest(user_id="user-a", credential_id=created.id)
    )
    assert resolved.secret["access_token"] == OAUTH2["access_token"]


async def test_a_killed_rotation_resumes(vault: RunningVault, vault_var: Path):
    vault_core = vault.parts
    for n in range(300):
        await vault_core.credentials.create("gateway", f"user-{n}", "k", "api_key", "crm", API_KEY)
    env = dict(
        os.environ,
        LEADMESH_VAR_DIR=str(vault_var),
        VAULT_ADDR=f"127.0.0.1:{vault.port}",
        LEADMESH_INSECURE_INTERNAL="0",
    )
    # The vault serves on this test's event loop: the command runs as an asyncio subprocess.
    command = [sys.executable, "-m", "cli", "keys", "rotate", "--batch"]
    first = await asyncio.create_subprocess_exec(*command, "2", env=env, stdout=PIPE)
    async for line in first.stdout:  # type: ignore[union-attr]
        if line.startswith(b"rewrapped 20/"):
            first.send_signal(signal.SIGKILL)  # mid-way, no chance to clean up
            break
    assert await first.wait() == -signal.SIGKILL
    status = await vault.parts.admin.status()
    assert 0 < status["pending"] < 300 and status["current"] == "v2"

    second = await asyncio.create_subprocess_exec(*command, "100", env=env, stdout=PIPE)
    out, _ = await second.communicate()
    assert second.returncode == 0
    assert out.startswith(b"resuming:")
    status = await vault.parts.admin.status()
    assert status["pending"] == 0
    assert {v: n for v, _, n in status["versions"]} == {"v1": 0, "v2": 300}
    for n in (0, 150, 299):
        rows, _ = await vault_core.credentials.list(f"user-{n}", 1, "")
        resolved = await vault_core.resolver.resolve("runner", f"user-{n}", rows[0]["id"], "c")
        assert resolved.secret == API_KEY
    shown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "keys", "status", env=env, stdout=PIPE
    )
    out, _ = await shown.communicate()
    assert b"* v2     wraps 300 keys" in out
