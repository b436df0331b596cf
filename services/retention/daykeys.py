"""The vault's day keys of the sealed categories, as retention sees them: destroyed after each
purge of a sealed category (`DestroyExpiredEpochKeys`), listed for compliance (`ListEpochKeys`).

A day key is destroyed only once no row the participant still holds was sealed under it: the
horizon is the purge's cutoff or the oldest row the participant reports after the purge
(`PurgeResponse.oldest_time`), whichever is earlier, floored to its UTC day (the keys of the days
*before* it go). This module never sees a key: the vault answers counts and days.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from leadmesh.vault.v1 import vault_pb2, vault_pb2_grpc

from services.kit.clock import as_utc

# A status must not hang on the vault: without its answer the day keys are shown unknown.
LIST_TIMEOUT_SECONDS = 5.0


def ledger_category(participant: str, category: str) -> str:
    """The ledger's name for a category's day keys (its entries' participant is "vault"): dotted,
    so it never collides with a category of the vault's own, which are snake_case words."""
    return f"day_keys.{participant}.{category}"


def horizon(cutoff: datetime, oldest_held: datetime | None) -> date:
    """The first day whose key must stay: min(cutoff, oldest row still held), its UTC day."""
    earliest = cutoff if oldest_held is None else min(cutoff, as_utc(oldest_held))
    return as_utc(earliest).date()


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(frozen=True)
class Destroyed:
    keys: int
    # The oldest day whose key is still alive ("" when none is).
    oldest_day: str


class DayKeys:
    """The vault's `VaultService`, for the two RPCs retention may call on it."""

    def __init__(self, channel) -> None:
        self.stub = vault_pb2_grpc.VaultServiceStub(channel)

    async def destroy(
        self, participant: str, category: str, before: date, *, dry_run: bool
    ) -> Destroyed:
        request = vault_pb2.DestroyExpiredEpochKeysRequest(
            participant=participant,
            category=category,
            before=before.isoformat(),
            dry_run=dry_run,
        )
        reply = await self.stub.DestroyExpiredEpochKeys(request)
        return Destroyed(reply.keys_destroyed, reply.oldest_day)

    async def alive(self) -> dict[tuple[str, str], vault_pb2.EpochKeyCategory]:
        """{(participant, category): its day keys alive}, in one call."""
        reply = await self.stub.ListEpochKeys(
            vault_pb2.ListEpochKeysRequest(), timeout=LIST_TIMEOUT_SECONDS
        )
        return {(c.participant, c.category): c for c in reply.categories}
