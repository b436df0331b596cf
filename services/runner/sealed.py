"""The runner's execution data sealed at rest: which columns are sealed (declared here, carried
by their retention categories in retention.py), sealing them before they are written and opening
them after they are read, with the vault's keys (services/kit/sealing.py).

Writes take their keys (`create`) before anything is accepted: with the vault unreachable and the
keys not in memory, a webhook or a run is refused UNAVAILABLE (`EXECUTION_KEYS_UNAVAILABLE`, with
a Retry-After), never stored in plaintext. Reads fetch the keys of all the rows they return in
one call (per user, per page), never one per row. A value whose key is destroyed, or that does
not authenticate, reads as purged: never as an error. Plaintext rows (written before sealing, or
with `RUNNER_SEAL_EXECUTION_DATA=false`) read as they are.

Between the store and this module a sealed column's field holds its sealed text; everywhere else
it holds the value. Never logs a key or a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar

from services.kit.clock import Clock
from services.kit.errors import Unavailable
from services.kit.sealing import (
    ExecutionKeys,
    KeysUnavailable,
    Ref,
    SealedColumns,
    Unreadable,
    UserKeys,
    day_of,
    is_sealed,
)
from services.runner.model import Run
from services.runner.settings import RunnerSettings

WEBHOOK_LOG = SealedColumns(
    category="webhooks_log",
    table="webhook_log",
    columns=("headers", "query", "body"),
    time_column="receive_time",
    owner_column="user_id",
)
EXECUTION_DETAILS = SealedColumns(
    category="execution_details",
    table="runs",
    columns=("event",),
    time_column="create_time",
    owner_column="user_id",
)
ATTEMPT_DETAILS = SealedColumns(
    category="attempt_details",
    table="attempts",
    columns=("request", "response_headers", "response_body"),
    time_column="start_time",
    owner_column="user_id",
    # An attempt's row has no id of its own: its run and number name it.
    id_columns=("run_id", "number"),
)
NOTIFICATIONS = SealedColumns(
    category="notifications",
    table="notifications",
    columns=("message",),
    time_column="create_time",
    owner_column="user_id",
)

# A client told EXECUTION_KEYS_UNAVAILABLE tries again after this long (the vault's restart).
RETRY_AFTER_SECONDS = 5.0

T = TypeVar("T")


def keys_unavailable() -> Unavailable:
    return Unavailable(
        "EXECUTION_KEYS_UNAVAILABLE",
        "execution data cannot be sealed or opened now; try again shortly",
        retry_after=RETRY_AFTER_SECONDS,
    )


def max_ages(settings: RunnerSettings) -> dict[str, timedelta]:
    """Each sealed category's max age: when a day's key may first be destroyed."""
    details = timedelta(days=settings.execution_details_days)
    return {
        WEBHOOK_LOG.category: timedelta(days=settings.webhook_log_days),
        EXECUTION_DETAILS.category: details,
        ATTEMPT_DETAILS.category: details,
        NOTIFICATIONS.category: timedelta(days=settings.notification_days),
    }


def has_sealed(columns: SealedColumns, item: Any) -> bool:
    row = vars(item)
    return any(is_sealed(row.get(name)) for name in columns.columns)


class Sealing:
    """Seals and opens the runner's sealed columns of its domain values (model.py).

    `keys` None (a process without a vault channel) or `enabled` False: nothing is sealed;
    sealed values are still opened when `keys` is there."""

    def __init__(
        self,
        keys: ExecutionKeys | None,
        clock: Clock,
        *,
        enabled: bool = True,
        ages: Mapping[str, timedelta] | None = None,
    ) -> None:
        self.keys = keys
        self.clock = clock
        self.enabled = enabled and keys is not None
        self.ages = dict(ages or {})

    @classmethod
    def of(cls, settings: RunnerSettings, keys: ExecutionKeys | None, clock: Clock) -> Sealing:
        return cls(keys, clock, enabled=settings.seal_execution_data, ages=max_ages(settings))

    async def for_writing(self, user_id: str, refs: Iterable[Ref]) -> UserKeys | None:
        """The user's keys to seal `refs` with (made if missing); None when sealing is off.
        `KeysUnavailable` when the vault cannot be asked and they are not in memory."""
        if not self.enabled:
            return None
        assert self.keys is not None
        return await self.keys.for_user(user_id, refs, create=True)

    async def for_accepting(self, user_id: str, refs: Iterable[Ref]) -> UserKeys | None:
        """`for_writing`, refusing (UNAVAILABLE, with Retry-After) what cannot be sealed now."""
        refs = list(refs)
        try:
            keys = await self.for_writing(user_id, refs)
        except KeysUnavailable:
            raise keys_unavailable() from None
        if keys is not None and not keys.can_seal(refs):  # a day destroyed (a clock moved)
            raise keys_unavailable()
        return keys

    async def for_reading(
        self, user_id: str, rows: Iterable[tuple[SealedColumns, Any]]
    ) -> UserKeys:
        """The user's keys for every sealed row of `rows` ((columns, value) pairs), in one call
        to the vault (or none, when nothing is sealed or all is in memory). Raises UNAVAILABLE
        (`EXECUTION_KEYS_UNAVAILABLE`) when the vault cannot be asked."""
        refs = {columns.ref(vars(item)) for columns, item in rows if has_sealed(columns, item)}
        if not refs or self.keys is None:
            return UserKeys(user_id, {})
        try:
            return await self.keys.for_user(user_id, refs)
        except KeysUnavailable:
            raise keys_unavailable() from None

    def seal(self, columns: SealedColumns, keys: UserKeys | None, item: T) -> T:
        """`item` with its sealed columns sealed (as it is when `keys` is None: sealing off).
        Every value is sealed, whatever it looks like (a body that starts like a sealed value
        too). `Unreadable("destroyed")` when the keys hold none for the item's day."""
        if keys is None:
            return item
        row = vars(item)
        day, row_id = day_of(row[columns.time_column]), columns.row_id(row)
        sealed = {
            name: keys.seal(columns.place(name), day, row_id, row[name])
            for name in columns.columns
            if row.get(name) is not None
        }
        return replace(item, **sealed)  # type: ignore[type-var]

    def open(self, columns: SealedColumns, keys: UserKeys, item: T) -> T | None:
        """`item` with its sealed columns opened (as it is if none is sealed); None when one
        cannot be opened (destroyed or tampered with): it reads as purged."""
        if not has_sealed(columns, item):
            return item
        try:
            return replace(item, **columns.open_row(keys, vars(item)))  # type: ignore[type-var]
        except Unreadable:
            return None

    def purge_time(self, columns: SealedColumns, item: Any) -> datetime:
        """When the key of `item`'s day could first be destroyed: its day's end plus the
        category's max age (what a value unreadable without a purge time of its own shows)."""
        day = date.fromisoformat(day_of(vars(item)[columns.time_column]))
        end = datetime.combine(day + timedelta(days=1), time.min, UTC)
        return end + self.ages.get(columns.category, timedelta(0))

    async def for_delivery(self, run: Run) -> Run:
        """The run with its event opened, once the keys its delivery records with (today's
        attempt details and notifications, made if missing) are in memory: a worker asks this
        before it sends anything. `KeysUnavailable`: our outage (the run is held, no attempt
        used); `Unreadable`: its event can no longer be read (purged)."""
        refs: list[Ref] = []
        if self.enabled:
            today = day_of(self.clock.now())
            refs = [(ATTEMPT_DETAILS.category, today), (NOTIFICATIONS.category, today)]
        sealed = has_sealed(EXECUTION_DETAILS, run)
        if sealed:
            refs.append(EXECUTION_DETAILS.ref(vars(run)))
        if not refs or self.keys is None:
            if sealed:
                raise KeysUnavailable("no vault to open the event with")
            return run
        keys = await self.keys.for_user(run.user_id, refs, create=self.enabled)
        opened = self.open(EXECUTION_DETAILS, keys, run)
        if opened is None:
            raise Unreadable("destroyed")
        return opened
