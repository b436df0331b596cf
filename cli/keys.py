"""`leadmesh keys …` and `leadmesh oauth set-secret`: the vault's key management (operator)."""

from __future__ import annotations

import argparse
import sys
import time

import grpc
from leadmesh.vault.v1 import vault_pb2 as pb
from leadmesh.vault.v1 import vault_pb2_grpc

from cli.probes import operator_channel
from services.kit.config import MeshSettings, load_settings
from services.kit.errors import from_rpc_error


class Refused(Exception):
    pass


def _stub():
    channel, metadata = operator_channel(load_settings(MeshSettings), "vault")
    return channel, vault_pb2_grpc.VaultServiceStub(channel), metadata


def _call(method, request, metadata, timeout: float = 120):
    try:
        return method(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as error:
        remote = from_rpc_error(error)
        raise Refused(f"{remote.code.name} {remote.reason}: {remote.message}") from None


def _print_status(status: pb.KeyStatus) -> None:
    source = (
        "managed by the vault (var/vault)" if status.managed else "supplied (VAULT_MASTER_KEYS)"
    )
    print(f"KEKs {source}; current {status.current_version}")
    for version in status.versions:
        mark = "*" if version.current else " "
        print(f" {mark} {version.version:<6} wraps {version.data_key_count} keys")
    if status.pending:
        print(f"{status.pending} keys still wrapped by older versions: run `leadmesh keys rotate`")


def status(_args: argparse.Namespace) -> int:
    channel, stub, metadata = _stub()
    with channel:
        _print_status(_call(stub.GetKeyStatus, pb.GetKeyStatusRequest(), metadata))
    return 0


def rotate(args: argparse.Namespace) -> int:
    """A new current KEK, then every data key rewrapped under it, batch by batch. Interrupted, it
    resumes where it stopped: run it again."""
    channel, stub, metadata = _stub()
    with channel:
        state = _call(stub.GetKeyStatus, pb.GetKeyStatusRequest(), metadata)
        if state.pending:
            print(f"resuming: {state.pending} keys to rewrap under {state.current_version}")
        elif state.managed:
            state = _call(stub.BeginKeyRotation, pb.BeginKeyRotationRequest(), metadata)
            print(f"new KEK version {state.current_version} is current")
        else:
            print(f"every key is wrapped by {state.current_version}; nothing to do")
            return 0
        total, done, started = state.pending, 0, time.monotonic()
        while True:
            reply = _call(
                stub.RewrapDataKeys, pb.RewrapDataKeysRequest(batch_size=args.batch), metadata
            )
            done += reply.rewrapped
            rate = done / max(time.monotonic() - started, 1e-6)
            print(f"rewrapped {done}/{total}  ({rate:.0f}/s, {reply.remaining} left)", flush=True)
            if reply.remaining == 0:
                break
            if reply.rewrapped == 0:
                raise Refused("no progress: a data key cannot be unwrapped (see the vault's log)")
        _print_status(_call(stub.GetKeyStatus, pb.GetKeyStatusRequest(), metadata))
    return 0


def retire(args: argparse.Namespace) -> int:
    channel, stub, metadata = _stub()
    with channel:
        request = pb.RetireKeyVersionRequest(version=args.version)
        _print_status(_call(stub.RetireKeyVersion, request, metadata))
    return 0


def rotate_user(args: argparse.Namespace) -> int:
    channel, stub, metadata = _stub()
    with channel:
        request = pb.RotateUserDataKeyRequest(user_id=args.user_id)
        reply = _call(stub.RotateUserDataKey, request, metadata)
    print(f"new data key; {reply.reencrypted_count} secrets re-encrypted")
    return 0


def set_secret(args: argparse.Namespace) -> int:
    """Reads the client secret from stdin, so it never sits in shell history or `ps`."""
    secret = sys.stdin.readline().strip()
    channel, stub, metadata = _stub()
    with channel:
        request = pb.SetOAuthClientSecretRequest(provider=args.provider, client_secret=secret)
        _call(stub.SetOAuthClientSecret, request, metadata)
    print(f"client secret of {args.provider} stored, sealed by the vault")
    return 0


def add_commands(commands) -> None:
    keys = commands.add_parser("keys", help="the vault's encryption keys").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("status", help="KEK versions and the data keys each wraps").set_defaults(
        run=status
    )
    rotation = keys.add_parser("rotate", help="new current KEK, rewrap every data key (resumable)")
    rotation.add_argument("--batch", type=int, default=1000, help="data keys per transaction")
    rotation.set_defaults(run=rotate)
    retirement = keys.add_parser("retire", help="forget a KEK version that wraps no data key")
    retirement.add_argument("version")
    retirement.set_defaults(run=retire)
    user = keys.add_parser("rotate-user", help="new data key for one user, secrets re-encrypted")
    user.add_argument("user_id")
    user.set_defaults(run=rotate_user)
    oauth = commands.add_parser("oauth", help="OAuth providers").add_subparsers(
        dest="oauth_command", required=True
    )
    secret = oauth.add_parser("set-secret", help="store a provider's client secret (from stdin)")
    secret.add_argument("provider")
    secret.set_defaults(run=set_secret)
