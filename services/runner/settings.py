"""Runner's settings (`RUNNER_*`), read once at start-up."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.config import CommaList, MeshSettings


class RunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNNER_", extra="ignore", frozen=True)

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    database_url: SecretStr | None = None

    # Outgoing calls. The SSRF guard refuses loopback, private, link-local and metadata
    # destinations unless inside one of these networks (CIDRs).
    allowed_networks: CommaList = Field(default_factory=list)
    allow_plain_http: bool = False
    # Every outgoing connection is bound to this source address (fixed egress).
    egress_source_address: str | None = None
    # What third parties see (behind NAT these differ from the bound address); listed by
    # GET /v1/egress-ips. Default: the source address, when set.
    egress_addresses: CommaList = Field(default_factory=list)
    # A PEM bundle trusted in addition to the system's CAs (a private CA; the tests' receiver).
    ca_file: str | None = None
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    read_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0

    # Delivery.
    default_max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    backoff_base_seconds: Annotated[float, Field(gt=0)] = 1.0
    backoff_cap_seconds: Annotated[float, Field(gt=0)] = 300.0
    # A connection whose runs fail this many times in a row is paused.
    pause_after_failures: Annotated[int, Field(ge=1)] = 5
    # The most a rendered request (body, headers) may be; a larger render fails its run, which
    # is never retried (the same event renders the same way).
    max_render_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # Our own outage (the vault unreachable) holds a run without using an attempt, for at most
    # this long after it was queued; past that, each hold costs an attempt, so a failure that
    # only looks like an outage still ends at the run's maximum.
    outage_hold_seconds: Annotated[float, Field(gt=0)] = 6 * 3600.0
    # Failure e-mails about one connection are gathered: at most one per this many seconds,
    # saying how many runs failed (the in-app notifications stay one per run).
    failure_mail_window_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # In-process workers (0: none, the `leadmesh runner-worker` processes do the work) and
    # deliveries each worker runs at once.
    workers: Annotated[int, Field(ge=0)] = 1
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 64
    # How long a resolved credential may stay in a worker's memory (0: ask the vault each time).
    credential_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    # A claimed run whose worker is silent this long is claimed again.
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    # How often due retries and orphaned runs are (re)queued.
    reconcile_seconds: Annotated[float, Field(gt=0)] = 1.0
    # How often identity's deletion requests are read, suspending any user whose deletion the
    # runner was not told of directly (worker-only processes re-read the runner's own record
    # every reconcile_seconds).
    suspension_reconcile_seconds: Annotated[float, Field(gt=0)] = 30.0
    # The Redis stream of run ids (runners sharing a Redis database need their own).
    queue_stream: str = "leadmesh:runner:runs"
    # A queued run not claimed this long after it was pushed to Redis is pushed again.
    requeue_after_seconds: Annotated[float, Field(gt=0)] = 30.0

    # The shortest interval a schedule may have.
    min_schedule_seconds: Annotated[int, Field(ge=1)] = 60

    # Ingest.
    max_body_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024
    # Per connection: a token bucket of this rate (per second) and burst.
    webhook_rate_per_second: Annotated[float, Field(gt=0)] = 50.0
    webhook_burst: Annotated[int, Field(ge=1)] = 200
    signature_tolerance_seconds: Annotated[int, Field(ge=1)] = 300
    idempotency_hours: Annotated[int, Field(ge=1)] = 24

    # Retention categories (DESIGN: webhooks log 7 d, activity 30 d, execution details 7 d,
    # notifications 7 d; services/runner/retention.py). Idempotency keys live
    # `idempotency_hours`: exactly as long as they answer a repeat.
    webhook_log_days: Annotated[int, Field(ge=1)] = 7
    activity_days: Annotated[int, Field(ge=1)] = 30
    # A run's event and its attempts; at most activity_days (details never outlive their run).
    execution_details_days: Annotated[int, Field(ge=1)] = 7
    notification_days: Annotated[int, Field(ge=1)] = 7
    # A webhook signature is remembered while inside its replay window, and at most this many
    # days after it left it (ingest forgets most of them sooner on its own).
    webhook_signature_days: Annotated[int, Field(ge=0)] = 1
    # PostgreSQL: runs, attempts and webhook_log are partitioned by UTC day; today's partition and
    # this many days ahead are made at start and at every purge (rows past them go to the
    # DEFAULT partition: kept, purged in batches instead of dropped with their day).
    partition_days_ahead: Annotated[int, Field(ge=1, le=366)] = 7
    # An erasure waits this long for deliveries of the user already under way to end (their
    # outcome would write attempts and notifications after it); past that it fails and the
    # retention service tries again.
    erasure_drain_seconds: Annotated[float, Field(gt=0)] = 60.0

    # Execution data sealed at rest (services/runner/sealed.py): the webhooks log's headers,
    # query and body, a run's event, attempts' requests and responses, notification texts, under
    # keys the vault derives per (user, category, UTC day). False only for the benchmark's
    # comparison: payloads are then written in plaintext (sealed ones are still opened on read).
    seal_execution_data: bool = True
    # How long a derived key stays in a process's memory (never on disk).
    execution_key_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 600.0

    @model_validator(mode="after")
    def _details_within_activity(self) -> RunnerSettings:
        if self.execution_details_days > self.activity_days:
            raise ValueError("execution_details_days must not exceed activity_days")
        return self

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value

    @field_validator("egress_source_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value:
            ipaddress.ip_address(value)
        return value or None

    @field_validator("egress_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            ipaddress.ip_address(address)
        return value

    def public_egress_addresses(self) -> list[str]:
        if self.egress_addresses:
            return list(self.egress_addresses)
        return [self.egress_source_address] if self.egress_source_address else []
