"""The use cases count what operators watch, read back through the OpenTelemetry SDK (an in-memory
reader as this process's meter provider): logins and their throttles, the vault's resolves and
audit back-pressure, retention's purged rows and each category's compliance as its clock moves."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.identity.server import Parts as IdentityParts
from services.kit.errors import FailedPrecondition, NotFound, ResourceExhausted, Unauthenticated
from services.vault.audit import AuditLog
from services.vault.server import Parts as VaultParts
from tests.integration.identity_support import PASSWORD
from tests.integration.test_retention_service import EVENT_DAYS, T0, World, ledger, until
from tests.integration.test_vault_oauth import connect, oauth, vaults  # noqa: F401 - fixtures
from tests.integration.vault_support import SECRETS

IP, UA = "198.51.100.7", "test-agent/1.0"


@pytest.fixture(scope="module")
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)  # once per process: the instruments bind to it
    if metrics.get_meter_provider() is not provider:
        pytest.skip("another test of this process installed a meter provider first")
    yield reader


@pytest.fixture
async def world(tmp_path, mesh, database_url: str):
    built = World(tmp_path, mesh, database_url)
    yield built
    await built.close()


def value(reader: InMemoryMetricReader, name: str, **labels: str) -> float:
    """The sum of `name`'s points whose labels include `labels` (0 when none)."""
    total = 0.0
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    if labels.items() <= {k: str(v) for k, v in point.attributes.items()}.items():
                        total += point.value
    return total


async def test_logins_are_counted_by_outcome_and_throttles_by_rule(
    reader: InMemoryMetricReader, parts: IdentityParts
):
    before = {o: value(reader, "leadmesh.logins", outcome=o) for o in ("success", "throttled")}
    wrong_before = value(reader, "leadmesh.logins", outcome="invalid_credentials")
    held_before = value(reader, "leadmesh.logins.throttled", rule="account_ip")
    await parts.accounts.create_account("ann@example.com", PASSWORD)
    for _ in range(10):
        with pytest.raises(Unauthenticated):
            await parts.sessions.login("ann@example.com", "wrong password!", IP, UA)
    with pytest.raises(ResourceExhausted):
        await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    await parts.sessions.login("ann@example.com", PASSWORD, "198.51.100.8", UA)
    assert value(reader, "leadmesh.logins", outcome="invalid_credentials") == wrong_before + 10
    assert value(reader, "leadmesh.logins", outcome="throttled") == before["throttled"] + 1
    assert value(reader, "leadmesh.logins", outcome="success") == before["success"] + 1
    assert value(reader, "leadmesh.logins.throttled", rule="account_ip") == held_before + 1


async def test_resolves_are_counted_and_a_full_audit_queue_shows_as_back_pressure(
    reader: InMemoryMetricReader, vault_parts: VaultParts
):
    vault = vault_parts
    created = await vault.credentials.create(
        "gateway", "user-a", "key", "api_key", "acme", SECRETS["api_key"]
    )
    await vault.audit.close()
    vault.audit = vault.resolver.audit = AuditLog(
        vault.store, vault.resolver.clock, flush_seconds=30, max_queued=3
    )
    ok = value(reader, "leadmesh.vault.resolves", kind="api_key", outcome="ok")
    waits = value(reader, "leadmesh.vault.audit.waits")
    for n in range(3):
        await vault.resolver.resolve("runner", "user-a", created["id"], f"conn-{n}")
    assert value(reader, "leadmesh.vault.audit.pending") == 3
    await vault.resolver.resolve("runner", "user-a", created["id"], "conn-3")  # waits
    assert value(reader, "leadmesh.vault.audit.waits") == waits + 1
    assert value(reader, "leadmesh.vault.resolves", kind="api_key", outcome="ok") == ok + 4
    with pytest.raises(NotFound) as missing:
        await vault.resolver.resolve("runner", "user-a", "cred-missing", "conn-9")
    assert value(reader, "leadmesh.vault.resolves", outcome=missing.value.reason) >= 1
    await vault.audit.close()


async def test_purged_rows_are_counted_and_compliance_turns_late_with_the_clock(
    reader: InMemoryMetricReader, world: World
):
    vault = await world.participant("vault")
    limit = timedelta(days=EVENT_DAYS)
    await vault.add_events("u1", [T0 - limit - timedelta(minutes=1), T0])
    purged = value(reader, "leadmesh.retention.purged", owner="vault", category="events")
    running = await world.retention(batch_size=1)
    await until(lambda: ledger(world.operator(running)), what="a ledger entry of vault/events")
    assert value(reader, "leadmesh.retention.purged", owner="vault", category="events") == (
        purged + 1
    )
    labels = {"owner": "vault", "category": "events"}
    assert value(reader, "leadmesh.retention.compliant", **labels) == 1
    # As listed before the purge (the next listing sees it gone): the expired row's age.
    oldest = (limit + timedelta(minutes=1)).total_seconds()
    assert value(reader, "leadmesh.retention.oldest_age", **labels) == oldest
    world.clock.advance(seconds=(limit + timedelta(hours=2)).total_seconds())
    assert value(reader, "leadmesh.retention.compliant", **labels) == 0


async def test_the_queue_gauges_count_what_waits_and_how_long(
    reader: InMemoryMetricReader, tmp_path, database_url: str
):
    import uuid

    from services.kit.clock import SettableClock
    from services.kit.db import create_service_engine
    from services.runner.model import NewRun
    from services.runner.queue import DatabaseQueue
    from services.runner.server import migrate_database
    from services.runner.store import Store
    from tests.integration.runner_support import runner_settings

    migrate_database(runner_settings(tmp_path, database_url, 1))
    store, clock = Store(create_service_engine(database_url)), SettableClock(T0)
    queue = DatabaseQueue(store, clock)
    try:
        runs = [
            NewRun(id=str(uuid.uuid4()), user_id="u1", connection_id="c1", trigger="manual",
                   status="queued", attempts=0, max_attempts=3, event={}, create_time=T0,
                   next_attempt_time=T0, push_time=None, trace_parent=None)
            for _ in range(3)
        ]  # fmt: skip
        async with store.begin() as tx:
            await tx.runs.add(runs)
        clock.advance(seconds=90)
        await queue.reconcile()  # the runner's reconciler counts the queue
        assert value(reader, "leadmesh.queue.depth") == 3
        assert value(reader, "leadmesh.queue.oldest_age") == 90
    finally:
        await store.close()


# The vault's OAuth fixtures (`oauth`: a real authorization server) are test_vault_oauth.py's.
async def test_token_refreshes_are_counted_by_outcome(  # noqa: F811
    reader: InMemoryMetricReader,
    vaults,  # noqa: F811
    oauth,  # noqa: F811
):
    parts = vaults[0]
    refreshed = value(reader, "leadmesh.vault.refreshes", outcome="refreshed")
    refused = value(reader, "leadmesh.vault.refreshes", outcome="refused")
    first = await connect(parts, oauth)  # expiring within minutes: a resolve refreshes it
    second = await connect(parts, oauth, session="session-2")
    await parts.resolver.resolve("runner", "user-a", first["id"], "conn-1")
    assert value(reader, "leadmesh.vault.refreshes", outcome="refreshed") == refreshed + 1
    oauth.revoke_refresh_tokens()
    with pytest.raises(FailedPrecondition):
        await parts.resolver.resolve("runner", "user-a", second["id"], "conn-2")
    assert value(reader, "leadmesh.vault.refreshes", outcome="refused") == refused + 1
