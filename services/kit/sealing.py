"""Execution data sealed at rest, on the side of a service that holds it (runner, identity).

A sealed value is AES-256-GCM under a key the vault derives (`GetExecutionKeys`) from the owner's
key and the key of the value's category and UTC day: destroying either (erasure; the day passing
the category's max age) makes every copy of the value unreadable, backups included. A value is
stored as text, `PREFIX` + base64url(nonce ‖ ciphertext ‖ tag) of its JSON, so it fits the column
it always had (JSON columns hold it as a JSON string); its associated data binds it to its table,
column, row and owner, so a value moved to another row or user does not open.

Reads accept both forms: a value without the prefix is plaintext written before sealing existed
(the sealing migration seals those, `Seal` of the retention contract).

Derived keys stay in this process's memory for `cache_seconds` at most (never written anywhere),
one fetch per (user, category, day) and period however many rows use it; `forget_*` drops them at
once when the service learns they were destroyed. Ahead of UTC midnight the keys in use today are
fetched for tomorrow too (`prefetch_tomorrow`), so a vault outage at midnight does not stop
ingest. Never logs a key or a value.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from leadmesh.vault.v1 import vault_pb2

from services.kit.clock import Clock, as_utc
from services.kit.errors import OUTAGE_CODES, from_rpc_error

log = logging.getLogger("leadmesh.sealing")

PREFIX = "lmsealed:v1:"
NONCE_BYTES = 12
# The vault answers at most this many keys a call.
MAX_KEYS_PER_CALL = 64
# How long before UTC midnight tomorrow's keys are fetched for the keys sealed with today.
PREFETCH_SECONDS = 15 * 60
_ACTIVE = vault_pb2.EXECUTION_KEY_STATE_ACTIVE
_DESTROYED = vault_pb2.EXECUTION_KEY_STATE_DESTROYED

Ref = tuple[str, str]  # (category, day "YYYY-MM-DD")


class KeysUnavailable(Exception):
    """The vault cannot be asked and the key is not in memory: try again later (HTTP 503). Never
    a reason to store a value in plaintext."""


class Unreadable(Exception):
    """A sealed value that cannot be opened: its key was destroyed (`reason` "destroyed": the
    value reads as purged) or it does not authenticate ("tampered": moved to another row or user,
    or altered; it reads as purged too, and is logged by ids)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def day_of(when: datetime) -> str:
    """The UTC day a row's time falls in: the day whose key seals its values."""
    return as_utc(when).date().isoformat()


def is_sealed(stored: Any) -> bool:
    return isinstance(stored, str) and stored.startswith(PREFIX)


def associated_data(table: str, column: str, row_id: str, owner: str) -> bytes:
    return f"leadmesh-sealed|v1|{table}|{column}|{row_id}|{owner}".encode()


@dataclass(frozen=True)
class Place:
    """Where a sealed value lives: a column of a table, of one category."""

    category: str
    table: str
    column: str

    def aad(self, row_id: str, owner: str) -> bytes:
        return associated_data(self.table, self.column, row_id, owner)


@dataclass(frozen=True)
class SealedColumns:
    """A category's sealed columns, declared once by its owner beside the category and used by
    the owner's reads and writes and by the kit's retention participant (sealing the rows written
    before sealing, opening them for an export).

    A row's values are sealed under its owner's key (`owner_column`) and the category's key of
    the UTC day of `time_column`; `id_columns` name the row in the associated data (joined by
    ":"; a row of an integer key that is only known after its insert names itself by others)."""

    category: str
    table: str
    columns: tuple[str, ...]
    time_column: str
    owner_column: str
    id_columns: tuple[str, ...] = ("id",)

    def place(self, column: str) -> Place:
        return Place(self.category, self.table, column)

    def row_id(self, row: Mapping[str, Any]) -> str:
        return ":".join(_id_part(row[name]) for name in self.id_columns)

    def ref(self, row: Mapping[str, Any]) -> Ref:
        return self.category, day_of(row[self.time_column])

    def seal_row(self, keys: UserKeys, row: Mapping[str, Any]) -> dict[str, Any]:
        """`row`'s sealed columns (those it holds, not None), sealed: the values to write."""
        day, row_id = day_of(row[self.time_column]), self.row_id(row)
        return {
            name: keys.seal(self.place(name), day, row_id, row[name])
            for name in self.columns
            if name in row and row[name] is not None and not is_sealed(row[name])
        }

    def open_row(self, keys: UserKeys, row: Mapping[str, Any]) -> dict[str, Any]:
        """`row`'s sealed columns opened (plaintext passes as it is); `Unreadable` if one does
        not open."""
        day, row_id = day_of(row[self.time_column]), self.row_id(row)
        return {
            name: keys.open(self.place(name), day, row_id, row[name])
            for name in self.columns
            if name in row and row[name] is not None
        }


def _id_part(value: Any) -> str:
    if isinstance(value, datetime):
        return as_utc(value).isoformat(timespec="microseconds")
    return str(value)


class UserKeys:
    """One user's keys for the (category, day) pairs asked for: seals and opens their values."""

    def __init__(self, user_id: str, keys: dict[Ref, AESGCM | None]) -> None:
        self.user_id = user_id
        self._keys = keys

    def can_seal(self, refs: Iterable[Ref]) -> bool:
        """Whether every one of `refs` has a live key (none destroyed, none missing)."""
        return all(self._keys.get(ref) is not None for ref in refs)

    def seal(self, place: Place, day: str, row_id: str, value: Any) -> str:
        key = self._keys.get((place.category, day))
        if key is None:
            raise Unreadable("destroyed")  # a destroyed (or never asked) day seals nothing
        nonce = os.urandom(NONCE_BYTES)
        plaintext = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        sealed = key.encrypt(nonce, plaintext, place.aad(row_id, self.user_id))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, place: Place, day: str, row_id: str, stored: Any) -> Any:
        """The value (plaintext as stored, if it was never sealed), or `Unreadable`."""
        if not is_sealed(stored):
            return stored
        key = self._keys.get((place.category, day))
        if key is None:
            raise Unreadable("destroyed")
        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX) :])
            plaintext = key.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], place.aad(row_id, self.user_id)
            )
        except (InvalidTag, ValueError):
            log.warning(
                "sealed value does not authenticate",
                extra={"table": place.table, "column": place.column, "row_id": row_id},
            )
            raise Unreadable("tampered") from None
        return json.loads(plaintext)


class ExecutionKeys:
    """The derived keys of one service's execution data, from the vault, kept in memory briefly.

    `vault`: a VaultService stub whose channel names this service (runner or identity).
    `timeout`: the most a fetch waits for the vault (a request that needs a key it cannot have
    is refused quickly, before its own caller's deadline, instead of hanging on a stuck vault).
    """

    def __init__(
        self, vault: Any, clock: Clock, cache_seconds: float = 600.0, *, timeout: float = 2.0
    ) -> None:
        self.vault = vault
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        # (user, category, day) -> (valid until, cipher or None when destroyed)
        self._cache: dict[tuple[str, str, str], tuple[datetime, AESGCM | None]] = {}
        self._fetching: dict[tuple[str, tuple[Ref, ...], bool], asyncio.Future] = {}
        # (user, category) sealed with today: their keys are fetched for tomorrow before midnight.
        self._in_use: set[tuple[str, str]] = set()

    async def for_user(
        self, user_id: str, refs: Iterable[Ref], *, create: bool = False
    ) -> UserKeys:
        """The user's keys for `refs` (`create`: about to seal, so a missing key is made). A key
        not in memory is fetched; `KeysUnavailable` when the vault cannot be asked."""
        now = self.clock.now()
        wanted = sorted(set(refs))
        found: dict[Ref, AESGCM | None] = {}
        missing: list[Ref] = []
        for ref in wanted:
            cached = self._cache.get((user_id, *ref))
            if cached is not None and cached[0] > now:
                found[ref] = cached[1]
            else:
                missing.append(ref)
        if create:
            today = now.date().isoformat()
            self._in_use.update((user_id, c) for c, d in wanted if d == today)
        for start in range(0, len(missing), MAX_KEYS_PER_CALL):
            chunk = tuple(missing[start : start + MAX_KEYS_PER_CALL])
            found.update(await self._fetch_once(user_id, chunk, create))
        return UserKeys(user_id, found)

    def forget_user(self, user_id: str) -> None:
        """The user's keys were destroyed (erasure)."""
        for key in [k for k in self._cache if k[0] == user_id]:
            del self._cache[key]
        self._in_use = {u for u in self._in_use if u[0] != user_id}

    def forget_before(self, category: str, day: str) -> None:
        """The category's keys of the days before `day` were (or are about to be) destroyed."""
        for key in [k for k in self._cache if k[1] == category and k[2] < day]:
            del self._cache[key]

    async def prefetch_tomorrow(self) -> int:
        """Within `PREFETCH_SECONDS` of UTC midnight: tomorrow's keys of the (user, category)
        pairs sealed with today, fetched now. Returns how many users' keys were fetched."""
        now = self.clock.now()
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
        if (midnight - now).total_seconds() > PREFETCH_SECONDS:
            return 0
        tomorrow = (now.date() + timedelta(days=1)).isoformat()
        by_user: dict[str, list[Ref]] = {}
        for user_id, category in self._in_use:
            cached = self._cache.get((user_id, category, tomorrow))
            if cached is None or cached[0] <= midnight:
                by_user.setdefault(user_id, []).append((category, tomorrow))
        fetched = 0
        for user_id, refs in by_user.items():
            try:
                await self.for_user(user_id, refs, create=True)
                fetched += 1
            except KeysUnavailable:
                break  # the next round tries again
        return fetched

    async def run_prefetch(self, interval: float = 60.0) -> None:
        """A task: `prefetch_tomorrow` every `interval` seconds, and at midnight the day turns:
        yesterday's pairs are no longer in use (today's seals add them again)."""
        today = self.clock.now().date()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.prefetch_tomorrow()
            except Exception:  # never a key or a value; the next round tries again
                log.exception("prefetching tomorrow's execution keys failed")
            if self.clock.now().date() != today:
                today = self.clock.now().date()
                self._in_use.clear()

    async def _fetch_once(
        self, user_id: str, refs: tuple[Ref, ...], create: bool
    ) -> dict[Ref, AESGCM | None]:
        """Concurrent callers asking the same keys share one call."""
        flight = (user_id, refs, create)
        pending = self._fetching.get(flight)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._fetching[flight] = future
        try:
            keys = await self._fetch(user_id, refs, create)
            future.set_result(keys)
            return keys
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self._fetching[flight]

    async def _fetch(
        self, user_id: str, refs: tuple[Ref, ...], create: bool
    ) -> dict[Ref, AESGCM | None]:
        request = vault_pb2.GetExecutionKeysRequest(
            user_id=user_id,
            keys=[vault_pb2.ExecutionKeyRef(category=c, day=d) for c, d in refs],
            create=create,
        )
        try:
            reply = await self.vault.GetExecutionKeys(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            remote = from_rpc_error(error)
            if remote.code in OUTAGE_CODES:
                raise KeysUnavailable(f"the vault is unreachable ({remote.code.name})") from None
            raise
        now = self.clock.now()
        keys: dict[Ref, AESGCM | None] = {}
        for answer in reply.keys:
            ref = (answer.category, answer.day)
            if answer.state == _ACTIVE:
                keys[ref] = AESGCM(answer.key)
            else:
                keys[ref] = None  # destroyed, or absent: nothing opens with it
            if answer.state in (_ACTIVE, _DESTROYED) and self.cache_seconds > 0:
                self._remember(user_id, ref, keys[ref], now)
        return keys

    def _remember(self, user_id: str, ref: Ref, key: AESGCM | None, now: datetime) -> None:
        until = now + timedelta(seconds=self.cache_seconds)
        day_start = datetime.combine(date.fromisoformat(ref[1]), datetime.min.time(), now.tzinfo)
        if day_start > now:  # fetched ahead of its day: kept a period from the day's start
            until = day_start + timedelta(seconds=self.cache_seconds)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[(user_id, *ref)] = (until, key)
