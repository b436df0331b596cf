"""Execution keys: the keys runner and identity seal their execution data under at rest (the
client is services/kit/sealing.py).

A sealed value's key is HKDF-SHA256 of two random keys kept here, each stored only wrapped by a KEK
version: the user's owner key (destroyed at erasure, with the data key: `KeyAdmin.shred`) and the
key of the caller's category's UTC day (destroyed by `destroy_before` once the day has passed the
category's max age, and never made again: the category's horizon only moves forward). Either
destroyed, every copy of what the derived key sealed — backups of runner's and identity's databases
included — is noise. The halves never leave the vault; a derived key goes only to the service it
is derived for (the caller's mesh name is part of the derivation: runner's keys are not identity's).

Nothing is kept in memory between calls (a runner asks once per user, category and day per cache
period: a read of two small rows and a few AES-GCM opens is cheap), so a destruction holds at once
in every vault process. Never logs, stores or returns an unwrapped half, and a derived key only in
a GetExecutionKeys answer.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.kit.clock import Clock
from services.kit.errors import DomainError, InvalidArgument
from services.kit.metrics import counter
from services.vault.datakeys import DataKeys
from services.vault.keys import DAY_KEY, OWNER_KEY, key_subject, new_data_key
from services.vault.store import Store, Tx

log = logging.getLogger("leadmesh.vault.execution_keys")

MAX_KEYS = 64
DERIVED_BYTES = 32
ACTIVE, DESTROYED, ABSENT = "active", "destroyed", "absent"
_CATEGORY = re.compile(r"[a-z0-9_]{1,64}")
_PARTICIPANT = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# Keys answered, by the caller (runner, identity) and the key's state, or the refusal's reason.
_served = counter("leadmesh.vault.execution_keys")

Ref = tuple[str, str]  # (category, day "YYYY-MM-DD")


@dataclass(frozen=True)
class ExecutionKey:
    category: str
    day: str
    state: str  # ACTIVE, DESTROYED, ABSENT
    key: bytes = b""  # ACTIVE: the derived key


def derive(owner_key: bytes, day_key: bytes, participant: str, ref: Ref, user_id: str) -> bytes:
    """The key a (participant, category, day, user) seals with: the two halves bound together
    and to where the key belongs (RFC 5869; no salt: both halves are uniformly random)."""
    category, day = ref
    info = f"leadmesh-execution|v1|{participant}|{category}|{day}|{user_id}".encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=DERIVED_BYTES, salt=None, info=info)
    return hkdf.derive(owner_key + day_key)


def check_user(user_id: str) -> str:
    if not (0 < len(user_id) <= 64 and user_id.isprintable()):
        raise InvalidArgument(
            "USER_ID_REQUIRED", "name the user (1 to 64 printable characters)", field="user_id"
        )
    return user_id


def check_category(category: str, field: str = "category") -> str:
    if not _CATEGORY.fullmatch(category):
        raise InvalidArgument(
            "INVALID_CATEGORY", "a category is 1 to 64 of a-z, 0-9 and _", field=field
        )
    return category


def check_day(day: str, field: str = "day") -> str:
    """A UTC day as "YYYY-MM-DD" (the form whose text order is the days' order)."""
    try:
        if _DAY.fullmatch(day) and date.fromisoformat(day).isoformat() == day:
            return day
    except ValueError:
        pass
    raise InvalidArgument("INVALID_DAY", "a day is a date, YYYY-MM-DD", field=field)


def check_participant(participant: str) -> str:
    if not _PARTICIPANT.fullmatch(participant):
        raise InvalidArgument(
            "INVALID_PARTICIPANT", "name the service of the category", field="participant"
        )
    return participant


def check_refs(refs: Iterable[Ref]) -> list[Ref]:
    refs = list(refs)
    if len(refs) > MAX_KEYS:
        raise InvalidArgument("TOO_MANY_KEYS", f"at most {MAX_KEYS} keys a call", field="keys")
    return [(check_category(c, "keys.category"), check_day(d, "keys.day")) for c, d in refs]


def _destroyed(ref: Ref, horizons: dict[str, str | None]) -> bool:
    before = horizons.get(ref[0])
    return before is not None and ref[1] < before


class ExecutionKeyring:
    """`compact`: what makes deleted rows leave the database's files (the vault's retention
    participant's `compact`: on SQLite, free pages given back and the WAL truncated)."""

    def __init__(
        self,
        store: Store,
        data_keys: DataKeys,
        clock: Clock,
        compact: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.data_keys = data_keys
        self.keyring = data_keys.keyring
        self.clock = clock
        self.compact = compact

    async def get(
        self, participant: str, user_id: str, refs: Iterable[Ref], *, create: bool
    ) -> list[ExecutionKey]:
        """The caller's keys of one user, in the order asked. `create`: a missing key is made
        (never one of a destroyed day); otherwise it answers ABSENT."""
        try:
            answers = await self._get(participant, user_id, refs, create)
        except DomainError as error:
            _count(participant, error.reason)
            raise
        for answer in answers:
            _count(participant, answer.state)
        return answers

    async def _get(
        self, participant: str, user_id: str, refs: Iterable[Ref], create: bool
    ) -> list[ExecutionKey]:
        user_id, asked = check_user(user_id), check_refs(refs)
        # Sorted: concurrent makers insert in one order (PostgreSQL never deadlocks them).
        wanted = sorted(set(asked))
        categories = sorted({category for category, _ in wanted})
        async with self.store.read() as tx:
            owner = await tx.owner_key(user_id)
            horizons = await tx.horizons(participant, categories)
            days = await self._days(tx, participant, wanted)
        alive = [ref for ref in wanted if not _destroyed(ref, horizons)]
        if create and alive and (owner is None or any(ref not in days for ref in alive)):
            async with self.store.begin() as tx:
                owner = await self._make(tx, participant, user_id, alive, days, horizons)
                days = await self._days(tx, participant, wanted)
        owner_key = self._owner_key(user_id, owner) if owner is not None else None
        answers = []
        for ref in asked:
            if _destroyed(ref, horizons):
                answers.append(ExecutionKey(*ref, DESTROYED))
            elif owner_key is None or ref not in days:
                answers.append(ExecutionKey(*ref, ABSENT))
            else:
                day_key = self._day_key(participant, ref, days[ref])
                key = derive(owner_key, day_key, participant, ref, user_id)
                answers.append(ExecutionKey(*ref, ACTIVE, key))
        return answers

    async def _make(
        self,
        tx: Tx,
        participant: str,
        user_id: str,
        alive: list[Ref],
        days: dict[Ref, dict[str, Any]],
        horizons: dict[str, str | None],
    ) -> dict[str, Any] | None:
        """The owner key (read again: a shred may have come between), made if missing, and the
        missing day keys made (insert-or-ignore: a concurrent first use's stays), the horizons
        read again under their lock; `horizons` updated in place."""
        now = self.clock.now()
        owner = await tx.owner_key(user_id)
        if owner is None:
            version, wrapped = self.keyring.wrap(user_id, new_data_key(), OWNER_KEY)
            await tx.add_owner_key(
                {"user_id": user_id, "kek_version": version, "wrapped_key": wrapped,
                 "create_time": now}
            )  # fmt: skip
            owner = await tx.owner_key(user_id)  # ours, or a concurrent first use's
        missing = [ref for ref in alive if ref not in days]
        for category in sorted({category for category, _ in missing}):
            horizons[category] = await tx.hold_horizon(participant, category, now)
        for category, day in missing:
            if _destroyed((category, day), horizons):
                continue  # destroyed meanwhile
            ids = {"participant": participant, "category": category, "day": day}
            version, wrapped = self.keyring.wrap(key_subject(DAY_KEY, ids), new_data_key(), DAY_KEY)
            await tx.add_epoch_key(
                {**ids, "kek_version": version, "wrapped_key": wrapped, "create_time": now}
            )
        return owner

    @staticmethod
    async def _days(tx: Tx, participant: str, refs: list[Ref]) -> dict[Ref, dict[str, Any]]:
        if not refs:
            return {}
        rows = await tx.epoch_keys(participant, refs)
        return {(row["category"], row["day"]): row for row in rows}

    def _owner_key(self, user_id: str, row: dict[str, Any]) -> bytes:
        return self.data_keys.unwrap(user_id, row["kek_version"], row["wrapped_key"], OWNER_KEY)

    def _day_key(self, participant: str, ref: Ref, row: dict[str, Any]) -> bytes:
        ids = {"participant": participant, "category": ref[0], "day": ref[1]}
        subject = key_subject(DAY_KEY, ids)
        return self.data_keys.unwrap(subject, row["kek_version"], row["wrapped_key"], DAY_KEY)

    async def destroy_before(
        self, participant: str, category: str, before: str, *, dry_run: bool = False
    ) -> tuple[int, str | None]:
        """(keys destroyed, the oldest day whose key lives on): the category's day keys of every
        day before `before` deleted — from the files too — and the horizon moved to `before`
        (never back), so none of them is made again. `dry_run`: counted, nothing destroyed."""
        participant = check_participant(participant)
        category, before = check_category(category), check_day(before, "before")
        if dry_run:
            async with self.store.read() as tx:
                count = await tx.count_epoch_keys_before(participant, category, before)
                return count, await tx.oldest_epoch_day(participant, category, before)
        async with self.store.begin() as tx:
            # The horizon first: a maker holding it (PostgreSQL) commits its keys before this
            # deletes them; one that comes after sees the new horizon.
            await tx.advance_horizon(participant, category, before, self.clock.now())
            count = await tx.delete_epoch_keys_before(participant, category, before)
            oldest = await tx.oldest_epoch_day(participant, category)
        if count:
            await self.store.vacuum_epoch_keys()
        # Every time, not only when this call deleted: a call cut short after its commit is
        # called again by retention, and this one then truncates the log the other left.
        await self.compact()
        if count:
            log.info(
                "epoch keys destroyed",
                extra={"participant": participant, "category": category, "before": before,
                       "keys": count},
            )  # fmt: skip
        return count, oldest

    async def categories(self) -> list[dict[str, Any]]:
        """Per (participant, category) ever used: keys alive, oldest day, destroyed_before."""
        async with self.store.read() as tx:
            return await tx.epoch_categories()


def _count(participant: str, outcome: str) -> None:
    _served.add(1, {"participant": participant, "outcome": outcome})
