"""OAuth 2 providers: their configuration and the calls to their endpoints (the authorization URL
with PKCE (S256), the code exchange, the refresh), through authlib's client. What uses them —
the single-use state, the session binding, storing the tokens — is oauth_connect.py (connecting)
and refresh.py (refreshing).

Providers come from `VAULT_OAUTH_PROVIDERS` (inline JSON or a file). Their endpoints must be
HTTPS (loopback excepted, for tests and local development); in production mode a client secret in
that file is refused: it is set with `leadmesh oauth set-secret` and kept sealed by the vault.
"""

from __future__ import annotations

import json
import secrets
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.integrations.base_client.errors import OAuthError
from pydantic import BaseModel, Field, ValidationError, field_validator

from services.kit.errors import InvalidArgument

with warnings.catch_warnings():
    # authlib prefers the httpx2 fork and falls back to httpx with a warning; httpx is the
    # client the rest of the mesh uses.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class InvalidGrant(Exception):
    """The provider refused the grant (`invalid_grant`): the user must connect again."""


class ProviderUnreachable(Exception):
    """The token endpoint failed or answered something else than a token."""


class Provider(BaseModel):
    # For people (the web app's list of providers); the name when empty.
    title: str = Field(default="", max_length=100)
    authorize_url: str
    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: str | None = None
    scopes: list[str] = Field(default_factory=list)
    # Whether the provider replaces the refresh token at each refresh (documentation for
    # operators: the vault always stores whatever refresh token comes back, atomically).
    rotating_refresh_tokens: bool = False
    token_endpoint_auth_method: str = "client_secret_post"  # noqa: S105 - a method name

    @field_validator("authorize_url", "token_url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
            raise ValueError("provider endpoints must be https:// (http only on loopback)")
        return value


@dataclass(frozen=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    expires_at: int | None
    scopes: list[str]


def load_providers(setting: str | None, *, production: bool) -> dict[str, Provider]:
    if not setting:
        return {}
    try:
        text = setting if setting.lstrip().startswith("{") else Path(setting).read_text()
        specs = json.loads(text)
        if not isinstance(specs, dict):
            raise ValueError('not a JSON object {"<provider>": {…}}')
    except (OSError, ValueError) as error:
        raise SystemExit(f"VAULT_OAUTH_PROVIDERS is not valid: {error}") from None
    providers = {}
    for name, spec in specs.items():
        try:
            providers[name] = Provider.model_validate(spec)
        except ValidationError as error:
            # One line, and never the input: a provider's entry may hold its client secret.
            reasons = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in error.errors()
            )
            raise SystemExit(f"VAULT_OAUTH_PROVIDERS[{name}] is not valid: {reasons}") from None
    if production and any(p.client_secret for p in providers.values()):
        raise SystemExit(
            "VAULT_OAUTH_PROVIDERS holds client secrets, which production mode (VAULT_PRODUCTION) "
            "refuses: remove them and set each with `leadmesh oauth set-secret <provider>`"
        )
    return providers


def _visible_ascii(value: object) -> bool:
    # RFC 6749 Appendix A: access and refresh tokens are 1*VSCHAR (%x20-7E). Anything else would
    # go into an Authorization header it cannot travel in (and leak through the error saying so).
    return isinstance(value, str) and bool(value) and all(" " <= c <= "~" for c in value)


def _tokens(token: dict) -> Tokens:
    if not token.get("access_token"):
        raise ProviderUnreachable("no access token in the answer")
    refresh = token.get("refresh_token")
    if not _visible_ascii(token["access_token"]) or (refresh and not _visible_ascii(refresh)):
        raise ProviderUnreachable("a token in the answer is not visible ASCII (RFC 6749)")
    expires_at = token.get("expires_at")
    if expires_at is None and token.get("expires_in"):
        expires_at = int(time.time()) + int(token["expires_in"])
    scope = token.get("scope") or ""
    return Tokens(
        access_token=token["access_token"],
        refresh_token=token.get("refresh_token"),
        expires_at=int(expires_at) if expires_at else None,
        scopes=scope.split() if isinstance(scope, str) else list(scope),
    )


class OAuthProviders:
    """The configured providers and the calls to their token endpoints."""

    def __init__(
        self,
        providers: dict[str, Provider],
        client_secret: Callable[[str], Awaitable[str | None]],
        timeout: float,
    ) -> None:
        self._providers = providers
        self._client_secret = client_secret  # a sealed secret from the vault, in production
        self._timeout = timeout

    def configured(self) -> list[tuple[str, Provider]]:
        """Every provider, by name."""
        return sorted(self._providers.items())

    def get(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            raise InvalidArgument(
                "UNKNOWN_PROVIDER",
                f"no OAuth provider named {name!r} is configured",
                field="provider",
            )
        return provider

    async def _client(self, name: str, redirect_uri: str | None = None) -> AsyncOAuth2Client:
        provider = self.get(name)
        secret = provider.client_secret or await self._client_secret(name)
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=secret,
            scope=" ".join(provider.scopes) or None,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=provider.token_endpoint_auth_method,
            timeout=self._timeout,
            follow_redirects=False,
        )

    async def authorization_url(self, name: str, redirect_uri: str) -> tuple[str, str, str]:
        """(url, state, code verifier) for a new authorization request."""
        verifier = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(32)
        async with await self._client(name, redirect_uri) as client:
            url, _ = client.create_authorization_url(
                self.get(name).authorize_url, state=state, code_verifier=verifier
            )
        return url, state, verifier

    async def exchange_code(self, name: str, code: str, verifier: str, redirect_uri: str) -> Tokens:
        return await self._token_call(
            name,
            redirect_uri,
            lambda client, url: client.fetch_token(
                url, grant_type="authorization_code", code=code, code_verifier=verifier
            ),
        )

    async def refresh(self, name: str, refresh_token: str) -> Tokens:
        return await self._token_call(
            name, None, lambda client, url: client.refresh_token(url, refresh_token=refresh_token)
        )

    async def _token_call(self, name: str, redirect_uri: str | None, call) -> Tokens:
        provider = self.get(name)
        try:
            async with await self._client(name, redirect_uri) as client:
                return _tokens(dict(await call(client, provider.token_url)))
        except OAuthError as error:
            if error.error == "invalid_grant":
                raise InvalidGrant from None
            raise ProviderUnreachable(error.error) from None
        except (httpx.HTTPError, ValueError) as error:
            raise ProviderUnreachable(type(error).__name__) from None
