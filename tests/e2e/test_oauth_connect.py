"""Connecting a third-party account through the gateway, as a browser would: start → the
provider's consent → callback in the same session → a stored oauth2 credential → resolved by the
runner for a delivery → expired at the provider → refreshed once, and delivered again."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.e2e.conftest import Mesh, action, create, finished, register_and_login, start_run
from tests.support.oauth_server import OAuthServer


def _consent(provider: OAuthServer, location: str) -> str:
    """The provider's side: consent given, redirected back with a code."""
    assert location.startswith(provider.authorize_url)
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    with httpx.Client() as browser:
        return browser.get(location).headers["location"]


def _connect(mesh: Mesh, api: httpx.Client, provider: OAuthServer, name: str) -> str:
    """The browser's round trip; the new credential's id."""
    started = api.get("/v1/oauth/crm/start", params={"name": name})
    assert started.status_code == 302
    back = _consent(provider, started.headers["location"])
    assert back.startswith(f"{mesh.base_url}/v1/oauth/crm/callback?")
    done = api.get(back.removeprefix(mesh.base_url))
    assert done.status_code == 302
    landing = urlsplit(done.headers["location"])
    assert f"{landing.scheme}://{landing.netloc}" == mesh.env["LEADMESH_FRONTEND_URL"]
    assert landing.path.startswith("/credentials/") and "oauth=connected" in landing.query
    return landing.path.rsplit("/", 1)[1]


def test_connect_an_account_with_oauth(mesh_up: Mesh, oauth_provider: OAuthServer):
    with mesh_up.client() as api:
        register_and_login(api)
        credential_id = _connect(mesh_up, api, oauth_provider, "Work CRM")
        shown = api.get(f"/v1/credentials/{credential_id}").json()
        assert shown["kind"] == "oauth2" and shown["provider"] == "crm"
        assert shown["name"] == "Work CRM" and shown["scopes"] == ["contacts.read"]
        assert shown["status"] == "active"
        assert "access_token" not in api.get("/v1/credentials").text


def test_a_connected_account_delivers_and_is_refreshed_once_expired(
    mesh_up: Mesh, oauth_provider: OAuthServer
):
    with mesh_up.client() as api:
        register_and_login(api)
        credential_id = _connect(mesh_up, api, oauth_provider, "API")
        connection = create(
            api, action=action(oauth_provider.api_url, method="GET", credential_id=credential_id)
        )
        first = finished(api, start_run(api, connection["id"]))
        assert first["status"] == "succeeded", first
        assert [a["response_status"] for a in first["attempts"]] == [200]
        refreshed = oauth_provider.refresh_count
        oauth_provider.expire_access_tokens()  # the runner's token is now refused with a 401
        second = finished(api, start_run(api, connection["id"]))
        assert second["status"] == "succeeded", second
        assert [a["response_status"] for a in second["attempts"]][-1] == 200
        assert oauth_provider.refresh_count == refreshed + 1
        assert api.get(f"/v1/credentials/{credential_id}").json()["status"] == "active"


def test_a_callback_in_another_session_is_refused(mesh_up: Mesh, oauth_provider: OAuthServer):
    with mesh_up.client() as first, mesh_up.client() as other:
        register_and_login(first)
        started = first.get("/v1/oauth/crm/start")
        back = _consent(oauth_provider, started.headers["location"])
        register_and_login(other, address=None)  # someone else entirely
        hijack = other.get(back.removeprefix(mesh_up.base_url))
        assert hijack.status_code == 302
        assert "oauth_error=OAUTH_STATE_INVALID" in hijack.headers["location"]
        # The attempt spent the state: the flow it came from is void for its owner too.
        late = first.get(back.removeprefix(mesh_up.base_url))
        assert "oauth_error=OAUTH_STATE_INVALID" in late.headers["location"]
        assert first.get("/v1/credentials").json()["items"] == []


def test_an_unknown_provider_is_a_422(api: httpx.Client):
    register_and_login(api)
    refused = api.get("/v1/oauth/nobody/start")
    assert refused.status_code == 422 and refused.json()["code"] == "UNKNOWN_PROVIDER"


def test_the_configured_providers_are_listed_without_their_client(
    api: httpx.Client, oauth_provider: OAuthServer
):
    assert api.get("/v1/oauth/providers").status_code == 401
    register_and_login(api)
    listed = api.get("/v1/oauth/providers")
    assert listed.status_code == 200
    assert listed.json() == {
        "providers": [{"name": "crm", "title": "Acme CRM", "scopes": ["contacts.read"]}]
    }
    assert oauth_provider.client_id not in listed.text
    assert oauth_provider.client_secret not in listed.text


def test_a_reconnect_is_refused_for_another_users_credential(
    mesh_up: Mesh, oauth_provider: OAuthServer
):
    with mesh_up.client() as owner, mesh_up.client() as other:
        register_and_login(owner)
        credential_id = _connect(mesh_up, owner, oauth_provider, "Mine")
        register_and_login(other)
        refused = other.get("/v1/oauth/crm/start", params={"credential_id": credential_id})
        assert refused.status_code == 404 and refused.json()["code"] == "CREDENTIAL_NOT_FOUND"
        odd = other.get("/v1/oauth/crm/start", params={"credential_id": "x'; drop"})
        assert odd.status_code == 422
        # A browser following a link is sent to the frontend's page with the reason instead.
        page = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        for params, reason in (
            ({"credential_id": credential_id}, "CREDENTIAL_NOT_FOUND"),
            ({}, "UNKNOWN_PROVIDER"),
        ):
            provider = "crm" if params else "nobody"
            sent = other.get(f"/v1/oauth/{provider}/start", params=params, headers=page)
            assert sent.status_code == 302, sent.text
            landing = urlsplit(sent.headers["location"])
            assert f"{landing.scheme}://{landing.netloc}" == mesh_up.env["LEADMESH_FRONTEND_URL"]
            assert (landing.path, landing.query) == ("/credentials", f"oauth_error={reason}")
