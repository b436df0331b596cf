"""Vault's persistence: every query, each inside a transaction (`Store.begin()` → `Tx`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from services.kit.db import RowTx
from services.kit.db import Store as KitStore
from services.vault.keys import DATA_KEY, DAY_KEY, OWNER_KEY
from services.vault.tables import (
    audit_events,
    credentials,
    epoch_horizons,
    epoch_keys,
    leases,
    oauth_client_secrets,
    oauth_states,
    owner_keys,
    user_keys,
)

# Every table of keys wrapped by a KEK version, by the kind of key (keys.py), with the columns
# that name a key: a KEK rotation rewraps them all, and a version wrapping any is not retired.
WRAPPED: dict[str, tuple[Table, tuple[str, ...]]] = {
    DATA_KEY: (user_keys, ("user_id",)),
    OWNER_KEY: (owner_keys, ("user_id",)),
    DAY_KEY: (epoch_keys, ("participant", "category", "day")),
}


class Tx(RowTx):
    async def _insert_once(self, table, values: dict[str, Any]) -> bool:
        """Inserts unless the primary key exists; False when it did."""
        try:
            async with self.c.begin_nested():
                await self.c.execute(insert(table).values(**values))
        except IntegrityError:
            return False
        return True

    # data keys
    async def user_key(self, user_id: str) -> dict[str, Any] | None:
        return await self._one(select(user_keys).where(user_keys.c.user_id == user_id))

    async def add_user_key(self, values: dict[str, Any]) -> bool:
        return await self._insert_once(user_keys, values)

    async def rewrap_keys(self, rows: list[dict[str, Any]]) -> None:
        """Rewraps many keys, one statement per kind; a row changes only if it is still wrapped
        by the version it was read with (rows: kind, the kind's key columns, old, new, wrapped)."""
        for kind, (table, names) in WRAPPED.items():
            changes = [r for r in rows if r["kind"] == kind]
            if not changes:
                continue
            statement = (
                update(table)
                .where(
                    *(table.c[n] == bindparam(f"b_{n}") for n in names),
                    table.c.kek_version == bindparam("b_old"),
                )
                .values(kek_version=bindparam("b_new"), wrapped_key=bindparam("b_wrapped"))
            )
            fields = (*names, "old", "new", "wrapped")
            await self.c.execute(statement, [{f"b_{k}": r[k] for k in fields} for r in changes])

    async def replace_user_key(self, user_id: str, **values: Any) -> None:
        await self.c.execute(
            update(user_keys).where(user_keys.c.user_id == user_id).values(**values)
        )

    async def delete_user_key(self, user_id: str) -> bool:
        result = await self.c.execute(delete(user_keys).where(user_keys.c.user_id == user_id))
        return result.rowcount == 1

    async def key_counts(self) -> dict[str, int]:
        """Keys of every kind wrapped by each KEK version."""
        counts: dict[str, int] = {}
        for table, _ in WRAPPED.values():
            query = select(table.c.kek_version, func.count()).group_by(table.c.kek_version)
            for version, count in await self.c.execute(query):
                counts[version] = counts.get(version, 0) + count
        return counts

    async def keys_not_on(self, version: str, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` keys wrapped by another version than `version`, each with its kind."""
        found: list[dict[str, Any]] = []
        for kind, (table, names) in WRAPPED.items():
            if len(found) >= limit:
                break
            query = (
                select(*(table.c[n] for n in names), table.c.kek_version, table.c.wrapped_key)
                .where(table.c.kek_version != version)
                .order_by(*(table.c[n] for n in names))
                .limit(limit - len(found))
            )
            found += [{**row, "kind": kind} for row in await self._all(query)]
        return found

    # execution keys (execution_keys.py)
    async def owner_key(self, user_id: str) -> dict[str, Any] | None:
        return await self._one(select(owner_keys).where(owner_keys.c.user_id == user_id))

    async def add_owner_key(self, values: dict[str, Any]) -> bool:
        return await self._insert_once(owner_keys, values)

    async def delete_owner_key(self, user_id: str) -> bool:
        result = await self.c.execute(delete(owner_keys).where(owner_keys.c.user_id == user_id))
        return result.rowcount == 1

    async def epoch_keys(self, participant: str, refs: list[tuple[str, str]]) -> list[dict]:
        """The day keys of `refs` ((category, day) pairs) that exist."""
        query = select(epoch_keys).where(
            epoch_keys.c.participant == participant,
            tuple_(epoch_keys.c.category, epoch_keys.c.day).in_(refs),
        )
        return await self._all(query)

    async def add_epoch_key(self, values: dict[str, Any]) -> bool:
        return await self._insert_once(epoch_keys, values)

    async def horizons(self, participant: str, categories: list[str]) -> dict[str, str | None]:
        query = select(epoch_horizons.c.category, epoch_horizons.c.destroyed_before).where(
            epoch_horizons.c.participant == participant,
            epoch_horizons.c.category.in_(categories),
        )
        return {category: before for category, before in await self.c.execute(query)}

    async def hold_horizon(self, participant: str, category: str, now: datetime) -> str | None:
        """The category's horizon, its row made if need be and locked until the transaction
        ends (PostgreSQL: shared, so a destruction, which updates it, waits for the keys this
        transaction makes, and then deletes them; SQLite's writers take turns anyway)."""
        query = (
            select(epoch_horizons.c.destroyed_before)
            .where(
                epoch_horizons.c.participant == participant,
                epoch_horizons.c.category == category,
            )
            .with_for_update(read=True)
        )
        row = (await self.c.execute(query)).first()
        if row is None:
            await self._insert_once(
                epoch_horizons,
                {"participant": participant, "category": category, "update_time": now},
            )
            row = (await self.c.execute(query)).first()
        return row.destroyed_before  # type: ignore[union-attr]

    async def advance_horizon(
        self, participant: str, category: str, before: str, now: datetime
    ) -> None:
        """`before` becomes the horizon unless it is further already (it never moves back).
        The row locked by the UPDATE alone (a shared lock first would deadlock two of these)."""
        await self._insert_once(
            epoch_horizons, {"participant": participant, "category": category, "update_time": now}
        )
        await self.c.execute(
            update(epoch_horizons)
            .where(
                epoch_horizons.c.participant == participant,
                epoch_horizons.c.category == category,
                or_(
                    epoch_horizons.c.destroyed_before.is_(None),
                    epoch_horizons.c.destroyed_before < before,
                ),
            )
            .values(destroyed_before=before, update_time=now)
        )

    def _epoch_days(self, participant: str, category: str):
        return and_(epoch_keys.c.participant == participant, epoch_keys.c.category == category)

    async def count_epoch_keys_before(self, participant: str, category: str, before: str) -> int:
        query = select(func.count()).where(
            self._epoch_days(participant, category), epoch_keys.c.day < before
        )
        return (await self.c.execute(query)).scalar_one()

    async def delete_epoch_keys_before(self, participant: str, category: str, before: str) -> int:
        statement = delete(epoch_keys).where(
            self._epoch_days(participant, category), epoch_keys.c.day < before
        )
        return (await self.c.execute(statement)).rowcount

    async def oldest_epoch_day(
        self, participant: str, category: str, alive_from: str = ""
    ) -> str | None:
        query = select(func.min(epoch_keys.c.day)).where(
            self._epoch_days(participant, category), epoch_keys.c.day >= alive_from
        )
        return (await self.c.execute(query)).scalar_one()

    async def epoch_categories(self) -> list[dict[str, Any]]:
        """Per (participant, category) ever used: the day keys alive, the oldest day, and the
        horizon."""
        alive = (
            select(
                epoch_keys.c.participant,
                epoch_keys.c.category,
                func.count().label("keys"),
                func.min(epoch_keys.c.day).label("oldest_day"),
            )
            .group_by(epoch_keys.c.participant, epoch_keys.c.category)
            .subquery()
        )
        query = (
            select(
                epoch_horizons.c.participant,
                epoch_horizons.c.category,
                epoch_horizons.c.destroyed_before,
                func.coalesce(alive.c["keys"], 0).label("keys"),
                alive.c.oldest_day,
            )
            .select_from(
                epoch_horizons.outerjoin(
                    alive,
                    and_(
                        alive.c.participant == epoch_horizons.c.participant,
                        alive.c.category == epoch_horizons.c.category,
                    ),
                )
            )
            .order_by(epoch_horizons.c.participant, epoch_horizons.c.category)
        )
        return await self._all(query)

    # credentials
    async def credential(self, user_id: str, credential_id: str) -> dict[str, Any] | None:
        query = select(credentials).where(
            credentials.c.id == credential_id, credentials.c.user_id == user_id
        )
        return await self._one(query)

    async def credentials_page(
        self, user_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[dict[str, Any]]:
        condition = credentials.c.user_id == user_id
        if after is not None:
            time, last_id = after
            condition = condition & or_(
                credentials.c.create_time < time,
                (credentials.c.create_time == time) & (credentials.c.id < last_id),
            )
        query = (
            select(credentials)
            .where(condition)
            .order_by(credentials.c.create_time.desc(), credentials.c.id.desc())
            .limit(limit)
        )
        return await self._all(query)

    async def sealed_credential(self, user_id: str, credential_id: str) -> dict[str, Any] | None:
        """A credential with its owner's wrapped data key, read in one statement so that a
        concurrent per-user key rotation is seen entirely or not at all."""
        query = (
            select(
                credentials,
                user_keys.c.kek_version,
                user_keys.c.wrapped_key,
                user_keys.c.generation,
            )
            .select_from(
                credentials.outerjoin(user_keys, user_keys.c.user_id == credentials.c.user_id)
            )
            .where(credentials.c.id == credential_id, credentials.c.user_id == user_id)
        )
        return await self._one(query)

    async def touch_credentials(self, credential_ids: list[str], now: datetime) -> None:
        if credential_ids:
            await self.c.execute(
                update(credentials)
                .where(credentials.c.id.in_(credential_ids))
                .values(last_use_time=now)
            )

    async def user_credentials(self, user_id: str) -> list[dict[str, Any]]:
        return await self._all(select(credentials).where(credentials.c.user_id == user_id))

    async def add_credential(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(credentials).values(**values))

    async def update_credential(self, credential_id: str, **values: Any) -> None:
        await self.c.execute(
            update(credentials).where(credentials.c.id == credential_id).values(**values)
        )

    async def delete_credential(self, user_id: str, credential_id: str) -> bool:
        result = await self.c.execute(
            delete(credentials).where(
                credentials.c.id == credential_id, credentials.c.user_id == user_id
            )
        )
        return result.rowcount == 1

    async def delete_user_credentials(self, user_id: str) -> int:
        result = await self.c.execute(delete(credentials).where(credentials.c.user_id == user_id))
        await self.c.execute(delete(oauth_states).where(oauth_states.c.user_id == user_id))
        return result.rowcount

    # audit
    async def audit(self, events: list[dict[str, Any]]) -> None:
        if events:
            await self.c.execute(insert(audit_events), events)

    async def audit_events(self, user_id: str) -> list[dict[str, Any]]:
        query = (
            select(audit_events)
            .where(audit_events.c.user_id == user_id)
            .order_by(audit_events.c.id)
        )
        return await self._all(query)

    # OAuth
    async def add_oauth_state(self, values: dict[str, Any]) -> None:
        await self.c.execute(insert(oauth_states).values(**values))

    async def take_oauth_state(self, state_sha256: str, now: datetime) -> dict[str, Any] | None:
        """The live state, marked used; None when unknown, used or expired (single use even
        under concurrent callbacks: the conditional UPDATE lets one through)."""
        state = await self._one(
            select(oauth_states).where(oauth_states.c.state_sha256 == state_sha256)
        )
        if state is None:
            return None
        result = await self.c.execute(
            update(oauth_states)
            .where(
                oauth_states.c.state_sha256 == state_sha256,
                oauth_states.c.use_time.is_(None),
                oauth_states.c.expire_time > now,
            )
            .values(use_time=now)
        )
        return state if result.rowcount == 1 else None

    async def client_secret(self, provider: str) -> bytes | None:
        query = select(oauth_client_secrets.c.secret).where(
            oauth_client_secrets.c.provider == provider
        )
        row = (await self.c.execute(query)).first()
        return row.secret if row else None

    async def set_client_secret(self, provider: str, sealed: bytes, now: datetime) -> None:
        if not await self._insert_once(
            oauth_client_secrets, {"provider": provider, "secret": sealed, "update_time": now}
        ):
            await self.c.execute(
                update(oauth_client_secrets)
                .where(oauth_client_secrets.c.provider == provider)
                .values(secret=sealed, update_time=now)
            )

    # leases
    async def acquire_lease(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        if await self._insert_once(leases, {"name": name, "holder": holder, "expire_time": until}):
            return True
        result = await self.c.execute(
            update(leases)
            .where(leases.c.name == name, leases.c.expire_time <= now)
            .values(holder=holder, expire_time=until)
        )
        return result.rowcount == 1

    async def release_lease(self, name: str, holder: str) -> None:
        await self.c.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))


class Store(KitStore[Tx]):
    tx_class = Tx

    async def vacuum_epoch_keys(self) -> None:
        """PostgreSQL, after a destruction: the day keys' table written anew and the old file
        removed, so a deleted key's dead tuple is not in the data files a physical backup copies
        (VACUUM FULL of a few hundred rows: a brief exclusive lock). SQLite: secure_delete zeroes
        a deleted row, and the retention participant's compaction truncates the log."""
        if self.engine.dialect.name != "postgresql":
            return
        async with self.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(f"VACUUM FULL {epoch_keys.name}")
