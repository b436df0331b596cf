"""The vault as a retention participant: its categories, each max age a setting (`VAULT_*`,
settings.py), and the erasure of a user by crypto-shredding.

Every table of tables.py is in exactly one category or in `EXEMPT` with its reason (a unit test
holds it). An erasure first shreds the user's data key and owner key through the operator's own
path (`KeyAdmin.shred_keys`: the keys and the credentials deleted, the shred audited, the cache of
sealed rows dropped): every copy of the user's ciphertexts — secrets here, sealed execution data
in runner's and identity's databases — in backups or in a copy of a database file, is noise from
then on. Then the categories erase what is left of the user, the audit trail included (the
shred's own event too): the erasure certificate is the record that it happened.
"""

from __future__ import annotations

from sqlalchemy import func, select

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument
from services.kit.retention import (
    KEPT_UNTIL_ERASURE,
    Category,
    Participant,
    TableCategory,
    days,
)
from services.vault.audit import AuditLog
from services.vault.keyadmin import SYSTEM_OWNER, KeyAdmin, Shredded
from services.vault.sealcache import SealedRows
from services.vault.settings import VaultSettings
from services.vault.store import Store
from services.vault.tables import (
    audit_events,
    credentials,
    epoch_horizons,
    epoch_keys,
    leases,
    oauth_client_secrets,
    oauth_states,
    owner_keys,
    suspended_users,
    user_keys,
)

CONTRACT = "GDPR Art. 6(1)(b): needed to run the user's connections with their credentials"
SECURITY = "GDPR Art. 6(1)(f): accountability of every use of a secret (legitimate interest)"
# Never exported: ciphertext, its format, and the digest of the current OAuth access token.
SECRET_COLUMNS = ("user_id", "secret", "key_generation", "format_version", "token_sha256")

# Tables of no category, and why.
EXEMPT = {
    oauth_client_secrets.name: (
        "the operator's OAuth client secrets (one per provider, sealed under the vault's own "
        "data key): no user's data; replaced or removed by the operator"
    ),
    epoch_keys.name: (
        "the day keys of runner's and identity's sealed categories (random, wrapped by a KEK; no "
        "user's data): destroyed by DestroyExpiredEpochKeys after each purge of the category "
        "they protect, on retention's schedule, once their day has passed its max age"
    ),
    epoch_horizons.name: (
        "per sealed category, the day before which every day key is destroyed and never made "
        "again (no user's data); kept as long as the category exists"
    ),
}


def categories(settings: VaultSettings) -> list[Category]:
    """The vault's categories, in the order of an erasure (after the shred)."""
    return [
        TableCategory(
            "credentials", "the user's credentials: name, kind, provider, hint, scopes and the "
            "secret sealed under the user's data key", f"{CONTRACT}; {KEPT_UNTIL_ERASURE}",
            credentials, None, time_column="create_time", user_column="user_id",
            export_section="credentials", secret_columns=SECRET_COLUMNS,
        ),
        TableCategory(
            "oauth_states", "OAuth authorizations under way (PKCE verifier sealed), kept this "
            "long after expiry", CONTRACT, oauth_states, days(settings.expired_oauth_state_days),
            time_column="expire_time", user_column="user_id",
        ),
        TableCategory(
            "audit_log", "every create, resolve, refresh, update, delete and key operation: "
            "when, which service, which credential and connection, the outcome", SECURITY,
            audit_events, days(settings.audit_log_days), time_column="event_time",
            user_column="user_id", export_section="credential_audit_log",
        ),
        TableCategory(
            "refresh_leases", "which process refreshes which credential (credential ids, no "
            "user); released after the refresh, a crashed holder's kept this long after expiry",
            CONTRACT, leases, days(settings.expired_lease_days), time_column="expire_time",
        ),
        TableCategory(
            "suspensions", "users whose deletion was requested (ids only): none of their "
            "secrets leaves the vault", f"{CONTRACT}; {KEPT_UNTIL_ERASURE}", suspended_users,
            None, time_column="suspend_time", user_column="user_id",
        ),
        TableCategory(
            "data_keys", "the user's data key, wrapped by a KEK; erased, it makes every copy "
            "of the user's secrets unreadable (crypto-shredding)",
            f"{CONTRACT}; {KEPT_UNTIL_ERASURE}", user_keys, None, time_column="create_time",
            user_column="user_id",
        ),
        TableCategory(
            "owner_keys", "the user's owner key of execution data, wrapped by a KEK; erased, it "
            "makes every copy of the user's sealed webhooks, runs and logins unreadable",
            f"{CONTRACT}; {KEPT_UNTIL_ERASURE}", owner_keys, None, time_column="create_time",
            user_column="user_id",
        ),
    ]  # fmt: skip


class VaultParticipant(Participant):
    """The kit's participant, its erasure preceded by the shred; the shred's counts are the
    erasure's own (the credentials, OAuth states and key it deleted), so the certificate says
    what went."""

    def __init__(
        self,
        settings: VaultSettings,
        store: Store,
        admin: KeyAdmin,
        audit: AuditLog,
        sealed: SealedRows,
        clock: Clock,
    ) -> None:
        super().__init__("vault", store.database, categories(settings), clock)
        self.store, self.admin, self.audit, self.sealed = store, admin, audit, sealed

    async def erase(self, user_id: str) -> dict[str, tuple[int, int, str]]:
        if user_id == SYSTEM_OWNER:
            # Its data key seals the operator's OAuth client secrets: never a subject's.
            raise InvalidArgument("NOT_A_USER", "the vault's own owner is no user", field="user_id")
        async with self.store.read() as tx:
            held = await tx.user_key(user_id) is not None
            held = held or await tx.owner_key(user_id) is not None
            states = await tx.c.execute(
                select(func.count())
                .select_from(oauth_states)
                .where(oauth_states.c.user_id == user_id)
            )
            states_count = states.scalar_one()
            held = held or bool(await tx.user_credentials(user_id))
        shredded = Shredded(False, False, 0)
        if held:  # a second erasure shreds (and audits) nothing: it erases 0
            shredded = await self.admin.shred_keys("retention", user_id)
        # Whatever was queued for the user is written before their audit rows are erased.
        await self.audit.flush()
        result = await super().erase(user_id)
        counts = {
            "credentials": shredded.credentials,
            "oauth_states": states_count if held else 0,
            "data_keys": int(shredded.data_key),
            "owner_keys": int(shredded.owner_key),
        }
        for name, erased in counts.items():
            before, kept, why = result[name]
            result[name] = (before + erased, kept, why)
        self.sealed.forget([user_id])
        return result
