"""The participants retention works with: each service's `RetentionParticipant` over gRPC
(mTLS, as `retention`), and retention itself in-process, with its own categories."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import grpc
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc

from services.kit.clock import Clock
from services.kit.db import Database
from services.kit.errors import FailedPrecondition
from services.kit.grpcclient import open_channel
from services.kit.retention import FileCategory, Participant, TableCategory, days
from services.kit.timestamps import put_timestamp
from services.retention.settings import RetentionSettings
from services.retention.tables import erasure_cases, purge_ledger

SELF = "retention"
# An erasure may delete a great many rows (100 000 runs): more than the default deadline.
ERASE_TIMEOUT_SECONDS = 600.0


def own_categories(settings: RetentionSettings) -> list:
    """Retention's own categories: its ledger, its certificates, and the mesh's trace files."""
    return [
        TableCategory(
            name="purge_ledger",
            description="every purge run: participant, category, cutoff, rows, times, outcome",
            legal_basis="accountability (GDPR art. 5(2)): proof that retention is enforced",
            table=purge_ledger,
            max_age=days(settings.ledger_days),
            time_column="start_time",
        ),
        TableCategory(
            name="erasure_certificates",
            description="erasure cases and their certificates (a pseudonymous subject reference)",
            legal_basis="accountability (GDPR art. 5(2), 17): proof that an erasure was done",
            table=erasure_cases,
            max_age=days(settings.certificate_days),
            # Only ended cases have an end time: an open case never ages out.
            time_column="end_time",
        ),
        FileCategory(
            name="traces",
            description="OpenTelemetry spans of every process (OTLP-JSON files)",
            legal_basis="legitimate interest: operating and debugging the service",
            directory=Path(settings.mesh.var_dir) / "traces",
            max_age=days(settings.traces_days),
        ),
    ]


class Remote:
    """A service's participant over gRPC."""

    def __init__(self, name: str, channel: grpc.aio.Channel) -> None:
        self.name = name
        self.channel = channel
        self.stub = retention_pb2_grpc.RetentionParticipantStub(channel)

    async def list_policies(self, as_of: datetime) -> list[pb.Policy]:
        request = pb.ListPoliciesRequest()
        put_timestamp(request.as_of, as_of)
        return list((await self.stub.ListPolicies(request)).policies)

    async def purge(
        self, category: str, cutoff: datetime, batch_size: int, dry_run: bool
    ) -> pb.PurgeResponse:
        request = pb.PurgeRequest(category=category, batch_size=batch_size, dry_run=dry_run)
        put_timestamp(request.cutoff, cutoff)
        return await self.stub.Purge(request)

    async def seal(self, category: str, batch_size: int = 0) -> pb.SealResponse:
        return await self.stub.Seal(pb.SealRequest(category=category, batch_size=batch_size))

    async def erase(self, user_id: str, case_id: str) -> list[pb.ErasedCategory]:
        request = pb.EraseSubjectRequest(user_id=user_id, case_id=case_id)
        reply = await self.stub.EraseSubject(request, timeout=ERASE_TIMEOUT_SECONDS)
        return list(reply.categories)

    async def close(self) -> None:
        await self.channel.close()


class Local:
    """Retention's own participant, called in-process (no hop through its own server)."""

    def __init__(self, participant: Participant) -> None:
        self.name = participant.name
        self.participant = participant

    async def list_policies(self, as_of: datetime) -> list[pb.Policy]:
        return [
            await self.participant.policy(c, as_of) for c in self.participant.categories.values()
        ]

    async def purge(
        self, category: str, cutoff: datetime, batch_size: int, dry_run: bool
    ) -> pb.PurgeResponse:
        found = self.participant.category(category)  # the same check as Purge
        deleted, remaining, batches = await self.participant.purge(
            found, cutoff, batch_size, dry_run=dry_run
        )
        response = pb.PurgeResponse(
            rows_deleted=deleted, rows_still_expired=remaining, batches=batches
        )
        # As a remote participant's Purge answers (kit Participant.Purge).
        if (oldest := await self.participant.oldest(found)) is not None:
            put_timestamp(response.oldest_time, oldest)
        return response

    async def seal(self, category: str, batch_size: int = 0) -> pb.SealResponse:
        # Retention's own categories (ledger, certificates, traces) hold no execution data.
        raise FailedPrecondition("CATEGORY_NOT_SEALED", f"{category!r} is not sealed")

    async def erase(self, user_id: str, case_id: str) -> list[pb.ErasedCategory]:
        erased = await self.participant.erase(user_id)
        return [
            pb.ErasedCategory(category=name, rows_erased=e, rows_kept=k, kept_reason=why)
            for name, (e, k, why) in erased.items()
        ]

    async def close(self) -> None:
        return None


Client = Remote | Local


class Participants:
    """Every participant by name: the configured services, then retention itself."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = {c.name: c for c in clients}

    @classmethod
    def from_settings(
        cls, settings: RetentionSettings, database: Database, clock: Clock
    ) -> tuple[Participants, Participant]:
        own = Participant(SELF, database, own_categories(settings), clock)
        remote = [
            Remote(name, open_channel(settings.mesh, name, caller=SELF))
            for name in dict.fromkeys(settings.participants)
            if name != SELF
        ]
        return cls([*remote, Local(own)]), own

    def __getitem__(self, name: str) -> Client:
        return self.clients[name]

    def names(self) -> list[str]:
        return list(self.clients)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def max_age(policy: pb.Policy) -> timedelta | None:
    return policy.max_age.ToTimedelta() if policy.HasField("max_age") else None
