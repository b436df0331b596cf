"""The kit's pure parts: configuration masking, the error mapping, the settable clock."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from pydantic import SecretStr

from services.kit.clock import SettableClock, SystemClock, as_utc
from services.kit.config import MeshSettings, database_url, describe
from services.kit.errors import InvalidArgument, ResourceExhausted, from_rpc_error, to_grpc_status


def test_describe_masks_secrets_and_url_passwords(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:6379/0")
    monkeypatch.setenv("IDENTITY_PORT", "6000")
    mesh = MeshSettings(var_dir=tmp_path)
    shown = describe(mesh)
    assert shown["IDENTITY_PORT"] == 6000
    assert "hunter2" not in str(shown)
    assert shown["REDIS_URL"].startswith("redis://:***@127.0.0.1")
    assert mesh.addr("identity") == "127.0.0.1:6000"


def test_database_url_defaults_to_a_sqlite_file_per_service(tmp_path):
    mesh = MeshSettings(var_dir=tmp_path)
    assert database_url(None, mesh, "identity") == f"sqlite:///{tmp_path}/identity/identity.db"
    given = SecretStr("postgresql://u:p@h/db")
    assert database_url(given, mesh, "identity") == "postgresql://u:p@h/db"


def test_clocks():
    clock = SettableClock(datetime(2026, 3, 1, tzinfo=UTC))
    assert clock.advance(days=2) == datetime(2026, 3, 3, tzinfo=UTC)
    ahead = SystemClock(offset_seconds=86400).now() - datetime.now(UTC)
    assert 86399 < ahead.total_seconds() < 86401
    assert as_utc(datetime(2026, 1, 1)).tzinfo is UTC


class _FakeCall(grpc.RpcError):
    """What a failed call looks like to a client: code, details and trailing metadata."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


def test_domain_errors_round_trip_through_rich_status():
    status = to_grpc_status(InvalidArgument("PASSWORD_TOO_SHORT", "too short", field="password"))
    remote = from_rpc_error(_FakeCall(status))
    assert remote.code is grpc.StatusCode.INVALID_ARGUMENT
    assert remote.reason == "PASSWORD_TOO_SHORT"
    assert remote.violations[0].field == "password"

    throttled = from_rpc_error(
        _FakeCall(to_grpc_status(ResourceExhausted("LOGIN_THROTTLED", "wait", retry_after=42.5)))
    )
    assert throttled.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert throttled.retry_after == 42.5


def test_the_public_url_follows_the_gateway_port_unless_given(monkeypatch):
    monkeypatch.delenv("LEADMESH_PUBLIC_URL", raising=False)
    monkeypatch.delenv("LEADMESH_FRONTEND_URL", raising=False)
    monkeypatch.setenv("GATEWAY_HTTPS_PORT", "9443")
    mesh = MeshSettings(_env_file=None)
    assert mesh.public_url == mesh.frontend_url == "https://localhost:9443"
    monkeypatch.setenv("LEADMESH_PUBLIC_URL", "https://api.example.com")
    mesh = MeshSettings(_env_file=None)
    assert mesh.public_url == mesh.frontend_url == "https://api.example.com"


def test_secrets_in_url_query_parameters_are_masked():
    from services.kit.config import _hide_url_password

    shown = _hide_url_password("redis://cache:6379/0?password=s3cret&ssl_cert_reqs=none")
    assert "s3cret" not in shown and "ssl_cert_reqs=none" in shown


def test_timestamps_equal_protobufs_own_conversion():
    from datetime import UTC, datetime, timedelta, timezone

    from google.protobuf.timestamp_pb2 import Timestamp

    from services.kit.timestamps import to_timestamp

    for value in (
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
        datetime(2026, 12, 2, 5, 6, 7, 891011, tzinfo=UTC),
        datetime(2026, 1, 1),  # naive: UTC, as for FromDatetime
        datetime(2026, 5, 5, 1, 2, 3, 999999, tzinfo=timezone(timedelta(hours=5))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        reference = Timestamp()
        reference.FromDatetime(value)
        assert to_timestamp(value) == reference, value
    assert to_timestamp(None) is None
