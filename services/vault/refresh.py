"""OAuth 2 refresh: RefreshOAuthCredential (the runner was refused a token) and the refresh of a
token the resolve path found expiring, once per credential across processes (leases.py), so a
rotating refresh token is never spent twice.

Never logs or audits a token; a refused grant marks the credential for reconnection.
"""

from __future__ import annotations

import logging
from collections.abc import Container
from typing import Any

from services.kit.clock import Clock
from services.kit.errors import DomainError, FailedPrecondition, Unavailable
from services.kit.metrics import counter
from services.vault.audit import AuditLog, Event
from services.vault.credentials import ACTIVE, NEEDS_RECONNECT
from services.vault.datakeys import DataKeys, sealed_columns
from services.vault.leases import Leases
from services.vault.oauth import InvalidGrant, OAuthProviders, ProviderUnreachable
from services.vault.resolve import (
    Resolved,
    SealedCredentials,
    account_deleted,
    expiring,
    needs_reconnect,
    runner_ids,
)
from services.vault.store import Store

log = logging.getLogger("leadmesh.vault")


# Calls to a provider's token endpoint: refreshed, refused (invalid_grant), unreachable, or none
# made for want of a refresh token.
_refreshes = counter("leadmesh.vault.refreshes")


class Refresher:
    def __init__(
        self,
        opened: SealedCredentials,
        data_keys: DataKeys,
        leases: Leases,
        providers: OAuthProviders,
        audit: AuditLog,
        clock: Clock,
        *,
        refresh_margin_seconds: float,
        suspended: Container[str] = frozenset(),
    ) -> None:
        self.opened = opened
        self.store: Store = opened.store
        self.data_keys = data_keys
        self.leases = leases
        self.providers = providers
        self.audit = audit
        self.clock = clock
        self.margin = refresh_margin_seconds
        self.suspended = suspended

    async def refresh(
        self, caller: str, user_id: str, credential_id: str, connection_id: str, rejected: str
    ) -> Resolved:
        """A new access token for the runner, whose call with the token `rejected` (its SHA-256)
        was refused; a token refreshed meanwhile by anyone is served as it is."""
        user_id, credential_id, connection_id = runner_ids(user_id, credential_id, connection_id)
        event = Event(
            caller, user_id, "refresh", credential_id=credential_id, connection_id=connection_id
        )
        try:
            if user_id in self.suspended:
                raise account_deleted()
            resolved = await self.opened.open(user_id, credential_id)
            if resolved.credential["kind"] != "oauth2":
                raise FailedPrecondition("NOT_OAUTH2", "only oauth2 credentials refresh")
            resolved = await self._refresh(
                user_id, credential_id, resolved, rejected=rejected or ""
            )
        except DomainError as error:
            await self.audit.record(event._replace(outcome=error.reason))
            raise
        await self.audit.record(event._replace(used=True))
        return resolved

    async def renew(self, user_id: str, credential_id: str, seen: Resolved) -> Resolved:
        """The resolve path's refresh of an expiring token (audited by the resolve)."""
        return await self._refresh(user_id, credential_id, seen, rejected=None)

    async def _refresh(
        self, user_id: str, credential_id: str, seen: Resolved, *, rejected: str | None
    ) -> Resolved:
        """Refreshes under the credential's lease. Whoever held it before us may have refreshed
        already: then its result is returned and the (possibly rotated) refresh token is not
        spent twice."""
        async with self.leases.hold(f"refresh:{credential_id}"):
            current = await self.opened.open(user_id, credential_id, fresh=True)
            if current.credential["status"] == NEEDS_RECONNECT:
                raise needs_reconnect()  # whatever token the caller saw, none is served now
            replaced = current.credential["token_sha256"] != seen.credential["token_sha256"]
            if replaced or (rejected and current.credential["token_sha256"] != rejected):
                return current
            if rejected is None and not expiring(current, self.clock, self.margin):
                return current
            refresh_token = current.secret.get("refresh_token")
            if not refresh_token:
                _refreshes.add(1, {"outcome": "no_refresh_token"})
                await self._mark_reconnect(credential_id)
                raise needs_reconnect()
            secret = await self._new_tokens(current, refresh_token, credential_id)
            _refreshes.add(1, {"outcome": "refreshed"})
            await self._store(user_id, credential_id, secret)
            log.info("credential refreshed", extra={"credential_id": credential_id})
            return await self.opened.open(user_id, credential_id, fresh=True)

    async def _new_tokens(
        self, current: Resolved, refresh_token: str, credential_id: str
    ) -> dict[str, Any]:
        """The secret after the provider's refresh, keeping what its answer leaves out."""
        try:
            tokens = await self.providers.refresh(current.credential["provider"], refresh_token)
        except InvalidGrant:
            _refreshes.add(1, {"outcome": "refused"})
            await self._mark_reconnect(credential_id)
            log.info("refresh token refused", extra={"credential_id": credential_id})
            raise needs_reconnect() from None
        except ProviderUnreachable:
            _refreshes.add(1, {"outcome": "unreachable"})
            raise Unavailable(
                "OAUTH_PROVIDER_UNAVAILABLE", "the provider's token endpoint did not answer"
            ) from None
        secret = {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token or refresh_token,
            "expires_at": tokens.expires_at,
            "scopes": tokens.scopes or current.secret.get("scopes", []),
        }
        return {k: v for k, v in secret.items() if v is not None}

    async def _store(self, user_id: str, credential_id: str, secret: dict[str, Any]) -> None:
        async with self.store.begin() as tx:
            key, generation = await self.data_keys.get(tx, user_id, create=False)  # type: ignore[misc]
            await tx.update_credential(
                credential_id,
                status=ACTIVE,
                update_time=self.clock.now(),
                **sealed_columns(key, generation, user_id, credential_id, "oauth2", secret),
            )
        self.opened.sealed.forget()

    async def _mark_reconnect(self, credential_id: str) -> None:
        async with self.store.begin() as tx:
            await tx.update_credential(
                credential_id, status=NEEDS_RECONNECT, update_time=self.clock.now()
            )
        self.opened.sealed.forget()
