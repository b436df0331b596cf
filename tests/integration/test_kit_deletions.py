"""The deletion-request reconciler while identity cannot be reached: it keeps trying, and an
outage is one warning in the logs, not one line per retry."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.deletions import Reconciler
from tests.conftest import free_port


async def test_an_identity_outage_is_one_warning_however_many_retries(
    caplog: pytest.LogCaptureFixture,
):
    attempts = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as nobody:
        stub = health_pb2_grpc.HealthStub(nobody)

        async def reconcile() -> int:
            nonlocal attempts
            attempts += 1
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
            return 0

        reconciler = Reconciler("test", every=0.01, reconcile=reconcile)
        with caplog.at_level(logging.DEBUG, logger="leadmesh.deletions"):
            reconciler.start()
            for _ in range(200):
                if attempts >= 4:
                    break
                await asyncio.sleep(0.05)
            await reconciler.stop()
    assert attempts >= 4
    unavailable = [r for r in caplog.records if r.getMessage() == "deletion requests unavailable"]
    assert len(unavailable) >= 3
    assert [r.levelno for r in unavailable].count(logging.WARNING) == 1
