"""Key management: KEK rotation (rewrap every wrapped key — data keys, and the owner and day keys
of execution data — never re-encrypt secrets), retiring versions, per-user data-key rotation
(re-encrypt that user's secrets), crypto-shredding, and the OAuth client secrets the vault keeps
for itself."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound
from services.vault.audit import AuditLog, Event
from services.vault.datakeys import DataKeys
from services.vault.keys import DATA_KEY, key_subject, new_data_key, seal, secret_aad, unseal
from services.vault.oauth import OAuthProviders
from services.vault.sealcache import SealedRows
from services.vault.store import Store

log = logging.getLogger("leadmesh.vault.keys")


@dataclass(frozen=True)
class Shredded:
    data_key: bool
    owner_key: bool
    credentials: int


# The owner of the vault's own secrets (OAuth client secrets).
SYSTEM_OWNER = "system:vault"


def _supplied() -> FailedPrecondition:
    return FailedPrecondition(
        "KEYS_SUPPLIED",
        "KEKs come from VAULT_MASTER_KEYS: change them there, restart, then rewrap",
    )


class KeyAdmin:
    def __init__(
        self,
        store: Store,
        data_keys: DataKeys,
        sealed: SealedRows[Any],
        audit: AuditLog,
        providers: OAuthProviders,
        clock: Clock,
    ) -> None:
        """`sealed`: the resolve path's cache, emptied (or cleared of the users concerned) by
        every change of a key."""
        self.store = store
        self.data_keys = data_keys
        self.keyring = data_keys.keyring
        self.sealed = sealed
        self.audit = audit
        self.providers = providers
        self.clock = clock

    async def status(self) -> dict:
        self.keyring.reload()
        async with self.store.read() as tx:
            counts = await tx.key_counts()
        current = self.keyring.current
        versions = sorted(set(self.keyring.versions) | set(counts), key=lambda v: (len(v), v))
        return {
            "current": current,
            "versions": [(v, v == current, counts.get(v, 0)) for v in versions],
            "pending": sum(n for v, n in counts.items() if v != current),
            "managed": self.keyring.managed,
        }

    async def begin_rotation(self) -> dict:
        if not self.keyring.managed:
            raise _supplied()
        self.keyring.add_version()
        return await self.status()

    async def rewrap(self, batch_size: int) -> tuple[int, int, str]:
        """Rewraps up to `batch_size` keys (data keys first, then owner and day keys) under the
        current KEK, in one transaction; each row changes only if it is still wrapped as read,
        so concurrent runs never collide."""
        self.keyring.reload()
        current = self.keyring.current
        async with self.store.begin() as tx:
            rows = await tx.keys_not_on(current, batch_size or 500)
            changes = []
            for row in rows:
                kind, subject = row["kind"], key_subject(row["kind"], row)
                key = self.data_keys.unwrap(subject, row["kek_version"], row["wrapped_key"], kind)
                version, wrapped = self.keyring.wrap(subject, key, kind)
                changes.append(
                    {**row, "old": row["kek_version"], "new": version, "wrapped": wrapped}
                )
            await tx.rewrap_keys(changes)
        # Only these users' cached rows hold a data key wrapped the old way.
        self.sealed.forget(users=[c["user_id"] for c in changes if c["kind"] == DATA_KEY])
        async with self.store.read() as tx:
            remaining = sum(n for v, n in (await tx.key_counts()).items() if v != current)
        return len(changes), remaining, current

    async def retire(self, version: str) -> dict:
        status = await self.status()
        known = {v: n for v, _, n in status["versions"]}
        if version not in known:
            raise InvalidArgument(
                "UNKNOWN_KEY_VERSION", f"no KEK version {version!r}", field="version"
            )
        if version == status["current"] or known[version]:
            raise FailedPrecondition(
                "KEY_VERSION_IN_USE",
                f"{version} is current or still wraps {known[version]} keys: rotate first",
            )
        if not self.keyring.managed:
            raise _supplied()
        self.keyring.remove_version(version)
        self.sealed.forget()
        log.info("KEK version retired", extra={"version": version})
        return await self.status()

    async def rotate_user_key(self, caller: str, user_id: str) -> int:
        """A new data key for the user; every secret re-encrypted under it, in one transaction."""
        async with self.store.begin() as tx:
            found = await self.data_keys.get(tx, user_id, create=False)
            if found is None:
                # A mistyped id must not look like a rotation that found nothing to do.
                raise NotFound(
                    "USER_KEY_NOT_FOUND",
                    "the vault holds no data key for this user (unknown, or no secret stored)",
                    field="user_id",
                )
            old_key, generation = found
            new_key = new_data_key()
            version, wrapped = self.keyring.wrap(user_id, new_key)
            rows = await tx.user_credentials(user_id)
            for row in rows:
                aad = secret_aad(user_id, row["id"], row["kind"], row["format_version"])
                plaintext = unseal(old_key, row["secret"], aad)
                await tx.update_credential(
                    row["id"], secret=seal(new_key, plaintext, aad), key_generation=generation + 1
                )
            await tx.replace_user_key(
                user_id,
                kek_version=version,
                wrapped_key=wrapped,
                generation=generation + 1,
                rotate_time=self.clock.now(),
            )
        self.sealed.forget()
        await self.audit.record(Event(caller, user_id, "rotate_user_key"))
        return len(rows)

    async def shred(self, caller: str, user_id: str) -> tuple[bool, int]:
        """(a key destroyed, credentials deleted): see `shred_keys`."""
        shredded = await self.shred_keys(caller, user_id)
        return shredded.data_key or shredded.owner_key, shredded.credentials

    async def shred_keys(self, caller: str, user_id: str) -> Shredded:
        """Crypto-shredding: the data key and the owner key of execution data are deleted, so
        every copy of the user's ciphertexts — here, in runner's and identity's databases, and
        in backups — is noise; the credentials themselves are deleted too."""
        async with self.store.begin() as tx:
            data_key = await tx.delete_user_key(user_id)
            owner_key = await tx.delete_owner_key(user_id)
            count = await tx.delete_user_credentials(user_id)
        self.sealed.forget()
        destroyed = data_key or owner_key
        await self.audit.record(
            Event(caller, user_id, "shred", outcome="ok" if destroyed else "no_key")
        )
        log.info("user key shredded", extra={"user_id": user_id, "credentials": count})
        return Shredded(data_key, owner_key, count)

    async def set_client_secret(self, provider: str, client_secret: str) -> None:
        self.providers.get(provider)
        if not client_secret:
            raise InvalidArgument("INVALID_SECRET", "client_secret is empty", field="client_secret")
        aad = secret_aad(SYSTEM_OWNER, f"oauth-client:{provider}", "client_secret")
        async with self.store.begin() as tx:
            key, _ = await self.data_keys.get(tx, SYSTEM_OWNER, create=True)  # type: ignore[misc]
            sealed = seal(key, json.dumps(client_secret).encode(), aad)
            await tx.set_client_secret(provider, sealed, self.clock.now())

    async def client_secret(self, provider: str) -> str | None:
        aad = secret_aad(SYSTEM_OWNER, f"oauth-client:{provider}", "client_secret")
        async with self.store.read() as tx:
            sealed = await tx.client_secret(provider)
            found = await self.data_keys.get(tx, SYSTEM_OWNER, create=False)
        if sealed is None or found is None:
            return None
        return json.loads(unseal(found[0], sealed, aad))
