"""The test OAuth provider against a real OAuth client (authlib's httpx AsyncOAuth2Client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from tests.support.oauth_server import OAuthServer

REDIRECT_URI = "http://127.0.0.1:9/oauth/callback"  # never contacted: redirects aren't followed


@pytest.fixture
def server() -> Iterator[OAuthServer]:
    with OAuthServer() as running:
        yield running


def make_client(server: OAuthServer, **kwargs: object) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=server.client_id,
        client_secret=server.client_secret,
        redirect_uri=REDIRECT_URI,
        scope="contacts.read contacts.write",
        code_challenge_method="S256",
        **kwargs,
    )


@pytest.fixture
async def client(server: OAuthServer) -> AsyncIterator[AsyncOAuth2Client]:
    async with make_client(server) as oauth_client:
        yield oauth_client


async def authorize(url: str) -> dict[str, str]:
    """Open /authorize like a browser would, up to the redirect; return its query params."""
    async with httpx.AsyncClient() as browser:
        response = await browser.get(url, follow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


async def login(client: AsyncOAuth2Client, server: OAuthServer) -> dict:
    """Authorization code + PKCE from start to token."""
    verifier = generate_token(48)
    url, state = client.create_authorization_url(server.authorize_url, code_verifier=verifier)
    assert "code_challenge_method=S256" in url
    params = await authorize(url)
    assert params["state"] == state
    return await client.fetch_token(server.token_url, code=params["code"], code_verifier=verifier)


async def me(server: OAuthServer, access_token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    async with httpx.AsyncClient() as http:
        return await http.get(server.api_url, headers=headers)


async def test_code_flow_with_pkce_issues_tokens_that_open_the_api(server, client):
    token = await login(client, server)
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["scope"] == "contacts.read contacts.write"
    assert token["access_token"] and token["refresh_token"]

    response = await me(server, token["access_token"])
    assert response.status_code == 200
    assert response.json() == {"sub": "owner-1"}

    [record] = server.token_requests
    assert record["grant_type"] == "authorization_code"
    assert record["has_code_verifier"] is True
    assert record["client_auth"] == "client_secret_basic"
    assert record["status"] == 200 and record["error"] is None
    assert "client_secret" not in record and "code_verifier" not in record


async def test_client_secret_post_works_and_a_wrong_secret_does_not(server):
    async with make_client(server, token_endpoint_auth_method="client_secret_post") as client:
        await login(client, server)
    record = server.token_requests[-1]
    assert record["client_auth"] == "client_secret_post" and record["status"] == 200
    assert record["client_id"] == server.client_id and "client_secret" not in record

    async with AsyncOAuth2Client(
        client_id=server.client_id,
        client_secret="wrong",
        redirect_uri=REDIRECT_URI,
        code_challenge_method="S256",
    ) as bad:
        with pytest.raises(OAuthError) as caught:
            await login(bad, server)
    assert caught.value.error == "invalid_client"


async def test_refresh_rotates_and_the_old_refresh_token_dies(server, client):
    first = dict(await login(client, server))
    second = dict(
        await client.refresh_token(server.token_url, refresh_token=first["refresh_token"])
    )
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert server.refresh_count == 1
    assert (await me(server, second["access_token"])).status_code == 200

    with pytest.raises(OAuthError) as caught:
        await client.refresh_token(server.token_url, refresh_token=first["refresh_token"])
    assert caught.value.error == "invalid_grant"
    assert server.refresh_count == 1
    assert [r["grant_type"] for r in server.token_requests] == [
        "authorization_code",
        "refresh_token",
        "refresh_token",
    ]
    assert server.token_requests[-1]["error"] == "invalid_grant"


async def test_without_rotation_the_refresh_token_stays_valid():
    with OAuthServer(rotate_refresh_tokens=False) as server:
        async with make_client(server) as client:
            first = dict(await login(client, server))
            for _ in range(2):
                token = await client.refresh_token(
                    server.token_url, refresh_token=first["refresh_token"]
                )
                assert token["refresh_token"] == first["refresh_token"]
        assert server.refresh_count == 2


async def test_expired_access_token_gets_401_until_refreshed(server, client):
    token = dict(await login(client, server))
    server.expire_access_tokens()
    response = await me(server, token["access_token"])
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.headers["www-authenticate"].startswith("Bearer ")

    fresh = await client.refresh_token(server.token_url, refresh_token=token["refresh_token"])
    assert (await me(server, fresh["access_token"])).status_code == 200


async def test_short_lifetime_expires_on_its_own():
    with OAuthServer(access_token_lifetime=1) as server:
        async with make_client(server) as client:
            token = await login(client, server)
        assert token["expires_in"] == 1
        assert (await me(server, token["access_token"])).status_code == 200
        await asyncio.sleep(1.1)
        assert (await me(server, token["access_token"])).status_code == 401


@pytest.mark.parametrize("access_token", [None, "not-a-token"])
async def test_api_without_a_live_token_is_401_invalid_token(server, access_token):
    response = await me(server, access_token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_revoked_refresh_tokens_give_invalid_grant(server, client):
    token = dict(await login(client, server))
    server.revoke_refresh_tokens()
    with pytest.raises(OAuthError) as caught:
        await client.refresh_token(server.token_url, refresh_token=token["refresh_token"])
    assert caught.value.error == "invalid_grant"
    assert server.refresh_count == 0
    # A new login still works: only the tokens issued so far were revoked.
    fresh = await login(client, server)
    await client.refresh_token(server.token_url, refresh_token=fresh["refresh_token"])
    assert server.refresh_count == 1


async def test_pkce_verifier_is_checked(server, client):
    verifier = generate_token(48)
    url, _ = client.create_authorization_url(server.authorize_url, code_verifier=verifier)
    code = (await authorize(url))["code"]
    with pytest.raises(OAuthError) as caught:  # verifier missing
        await client.fetch_token(server.token_url, code=code)
    assert caught.value.error == "invalid_request"
    assert server.token_requests[-1]["has_code_verifier"] is False

    with pytest.raises(OAuthError) as caught:  # wrong verifier
        await client.fetch_token(server.token_url, code=code, code_verifier=generate_token(48))
    assert caught.value.error == "invalid_grant"

    await client.fetch_token(server.token_url, code=code, code_verifier=verifier)
    with pytest.raises(OAuthError) as caught:  # a code is good for one exchange only
        await client.fetch_token(server.token_url, code=code, code_verifier=verifier)
    assert caught.value.error == "invalid_grant"


async def test_authorize_requires_an_s256_challenge(server, client):
    url, state = client.create_authorization_url(server.authorize_url)  # no PKCE at all
    params = await authorize(url)
    assert params["error"] == "invalid_request" and params["state"] == state
    assert "code" not in params

    verifier = generate_token(48)
    url, _ = client.create_authorization_url(
        server.authorize_url, code_challenge=verifier, code_challenge_method="plain"
    )
    assert (await authorize(url))["error"] == "invalid_request"


async def test_deny_next_answers_access_denied_once(server, client):
    server.deny_next = True
    verifier = generate_token(48)
    url, state = client.create_authorization_url(server.authorize_url, code_verifier=verifier)
    params = await authorize(url)
    assert params == {
        "error": "access_denied",
        "error_description": params["error_description"],
        "state": state,
    }
    assert server.deny_next is False
    assert "code" in await authorize(url)


async def test_registered_redirect_uris_are_enforced():
    with OAuthServer(redirect_uris=["http://127.0.0.1:9/allowed"]) as server:
        async with make_client(server) as client:
            url, _ = client.create_authorization_url(
                server.authorize_url, code_verifier=generate_token(48)
            )
        async with httpx.AsyncClient() as browser:
            response = await browser.get(url, follow_redirects=False)
    assert response.status_code == 400  # never redirect to an unregistered URI
    assert response.json()["error"] == "invalid_request"


async def test_refreshes_are_served_concurrently_and_a_reused_token_loses(server):
    async with make_client(server) as one, make_client(server) as two:
        tokens = [dict(await login(one, server)), dict(await login(two, server))]
        server.refresh_delay = 0.5
        started = time.monotonic()
        await asyncio.gather(
            one.refresh_token(server.token_url, refresh_token=tokens[0]["refresh_token"]),
            two.refresh_token(server.token_url, refresh_token=tokens[1]["refresh_token"]),
        )
        assert time.monotonic() - started < 0.95  # two delays overlapped
        assert server.refresh_count == 2

        # Two concurrent refreshes with the SAME token: exactly one wins.
        same = one.token["refresh_token"]
        results = await asyncio.gather(
            one.refresh_token(server.token_url, refresh_token=same),
            two.refresh_token(server.token_url, refresh_token=same),
            return_exceptions=True,
        )
    errors = [r.error for r in results if isinstance(r, OAuthError)]
    assert errors == ["invalid_grant"]
    assert server.refresh_count == 3
