"""Connecting an account by OAuth 2 (StartOAuth, CompleteOAuth): the authorization-code flow, with
a single-use state bound to the user's session, PKCE (S256), the code exchanged by the vault and
the tokens stored as an oauth2 credential. The providers and the calls to their endpoints are
oauth.py's.

Never hands a token to the caller: what completes is the credential's metadata.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.kit.tokens import sha256_hex
from services.vault.credentials import Credentials
from services.vault.datakeys import DataKeys
from services.vault.keys import Tampered, seal, unseal
from services.vault.oauth import InvalidGrant, OAuthProviders, ProviderUnreachable

log = logging.getLogger("leadmesh.vault.oauth")


def _state_aad(state_sha256: str) -> bytes:
    return f"leadmesh-vault|oauth-state|v1|{state_sha256}".encode()


class OAuthConnect:
    def __init__(
        self,
        credentials: Credentials,
        data_keys: DataKeys,
        providers: OAuthProviders,
        clock: Clock,
        *,
        state_seconds: int,
    ) -> None:
        """`state_seconds`: how long a sign-in link may be completed."""
        self.credentials = credentials
        self.store = credentials.store
        self.data_keys = data_keys
        self.providers = providers
        self.clock = clock
        self.state_seconds = state_seconds

    async def start(
        self,
        user_id: str,
        session_id: str,
        provider: str,
        name: str,
        redirect_uri: str,
        *,
        credential_id: str = "",
    ) -> str:
        """The provider's consent URL. With `credential_id`, the flow reconnects that oauth2
        credential of the same provider (and keeps its name)."""
        if not session_id or not redirect_uri:
            raise InvalidArgument(
                "OAUTH_REQUEST_INVALID", "a session and a redirect URI are needed"
            )
        name = name.strip() or provider
        if credential_id:
            name, credential_id = await self._reconnecting(user_id, credential_id, provider)
        url, state, verifier = await self.providers.authorization_url(provider, redirect_uri)
        now, state_sha256 = self.clock.now(), sha256_hex(state)
        async with self.store.begin() as tx:
            key, _ = await self.data_keys.get(tx, user_id, create=True)  # type: ignore[misc]
            await tx.add_oauth_state(
                {
                    "state_sha256": state_sha256,
                    "user_id": user_id,
                    "session_sha256": sha256_hex(session_id),
                    "provider": provider,
                    "name": name[:200],
                    "credential_id": credential_id or None,
                    "verifier": seal(key, verifier.encode(), _state_aad(state_sha256)),
                    "expire_time": now + timedelta(seconds=self.state_seconds),
                }
            )
        return url

    async def complete(
        self,
        caller: str,
        user_id: str,
        session_id: str,
        provider: str,
        state: str,
        code: str,
        redirect_uri: str,
        error: str = "",
    ) -> dict[str, Any]:
        invalid = InvalidArgument(
            "OAUTH_STATE_INVALID", "this sign-in link is unknown, used, expired or not yours"
        )
        state_sha256 = sha256_hex(state or "-")
        async with self.store.begin() as tx:
            # Spent by any use, a mismatched one included: a state is never tried twice.
            row = await tx.take_oauth_state(state_sha256, self.clock.now())
        if (
            row is None
            or row["user_id"] != user_id
            or row["session_sha256"] != sha256_hex(session_id or "-")
            or row["provider"] != provider
        ):
            raise invalid
        async with self.store.read() as tx:
            key, _ = await self.data_keys.get(tx, user_id, create=False)  # type: ignore[misc]
        if error:
            raise FailedPrecondition("OAUTH_DENIED", "the provider did not grant access")
        try:
            verifier = unseal(key, row["verifier"], _state_aad(state_sha256)).decode()
        except Tampered:
            raise invalid from None
        secret = await self._exchange(provider, code, verifier, redirect_uri)
        if row["credential_id"]:
            try:
                credential = await self.credentials.update(
                    caller, user_id, row["credential_id"], ["secret"], secret=secret
                )
                log.info("oauth reconnected", extra={"credential_id": credential["id"]})
                return credential
            except NotFound:
                pass  # deleted meanwhile: the user still asked to connect, so a new one
        credential = await self.credentials.create(
            caller, user_id, row["name"], "oauth2", provider, secret
        )
        log.info("oauth connected", extra={"credential_id": credential["id"], "provider": provider})
        return credential

    async def _reconnecting(
        self, user_id: str, credential_id: str, provider: str
    ) -> tuple[str, str]:
        """(name, canonical id) of the credential a flow is started to reconnect."""
        credential = await self.credentials.get(user_id, credential_id)
        if credential["kind"] != "oauth2":
            raise FailedPrecondition(
                "NOT_OAUTH2", "only a credential connected with OAuth is reconnected"
            )
        if credential["provider"] != provider:
            raise InvalidArgument(
                "PROVIDER_MISMATCH",
                f"that credential was connected with {credential['provider']!r}",
                field="provider",
            )
        return credential["name"], credential["id"]

    async def _exchange(
        self, provider: str, code: str, verifier: str, redirect_uri: str
    ) -> dict[str, Any]:
        """The code exchanged for tokens, as an oauth2 credential's secret."""
        try:
            tokens = await self.providers.exchange_code(provider, code, verifier, redirect_uri)
        except InvalidGrant:
            raise FailedPrecondition(
                "OAUTH_EXCHANGE_FAILED", "the provider refused the authorization code"
            ) from None
        except ProviderUnreachable:
            raise Unavailable(
                "OAUTH_EXCHANGE_FAILED", "the provider's token endpoint did not answer"
            ) from None
        secret: dict[str, Any] = {"access_token": tokens.access_token, "scopes": tokens.scopes}
        if tokens.refresh_token:
            secret["refresh_token"] = tokens.refresh_token
        if tokens.expires_at:
            secret["expires_at"] = tokens.expires_at
        return secret
