"""Credentials in the browser: an API key and a login added (their secrets cleared from the form
and found in no page), an account connected with OAuth against the authlib server on loopback, one
that needs reconnecting reconnected, and deletion."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import (
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    register_and_login,
    sign_in_in_browser,
    sign_up_in_browser,
    start_run,
)
from tests.e2e.web import assert_no_secrets, check_page, field_error, path_of
from tests.support.oauth_server import OAuthServer

API_KEY = "sk_live_web_5d1c0a7e9b2f4a61"
LOGIN_PASSWORD = "hunter2-but-much-longer-9876"


def form(page, title: str):
    return page.get_by_role("form", name=title)


def connect_with_oauth(page, name: str) -> None:
    oauth = form(page, "Connect with OAuth")
    # The operator's providers, by their titles.
    oauth.get_by_label("Provider", exact=True).select_option(label="Acme CRM")
    oauth.get_by_label("Name", exact=True).fill(name)
    oauth.get_by_role("button", name="Connect").click()


def test_an_api_key_and_a_login_are_added_and_never_shown(page):
    sign_up_in_browser(page)
    page.get_by_role("link", name="Credentials").click()
    page.get_by_role("heading", name="Credentials").wait_for()
    expect(page.get_by_text("No credentials yet")).to_be_visible()
    check_page(page, "credentials-empty")

    key = form(page, "Add an API key")
    key.get_by_role("button", name="Add API key").click()
    expect(field_error(page.get_by_role("form", name="Add an API key"), "Name")).to_be_visible()
    key.get_by_label("Name", exact=True).fill("CRM production")
    key.get_by_label("Provider", exact=True).fill("HubSpot")
    key.get_by_label("API key", exact=True).fill(API_KEY)
    key.get_by_label("Header name", exact=True).fill("X-Api-Key")
    key.get_by_role("button", name="Add API key").click()
    expect(key.get_by_text("Saved “CRM production”")).to_be_visible()
    expect(key.get_by_label("API key", exact=True)).to_have_value("")
    row = page.get_by_role("row", name=re.compile("CRM production"))
    expect(row).to_contain_text("API key")
    expect(row).to_contain_text("HubSpot")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("never")

    login = form(page, "Add a login")
    login.get_by_label("Name", exact=True).fill("Legacy CRM")
    login.get_by_label("Provider", exact=True).fill("OldCRM")
    login.get_by_label("Username", exact=True).fill("sales@example.com")
    login.get_by_label("Password", exact=True).fill(LOGIN_PASSWORD)
    login.get_by_role("button", name="Add login").click()
    expect(login.get_by_text("Saved “Legacy CRM”")).to_be_visible()
    expect(login.get_by_label("Password", exact=True)).to_have_value("")
    expect(page.get_by_role("row", name=re.compile("Legacy CRM"))).to_contain_text("Login")
    check_page(page, "credentials")
    assert_no_secrets(page, [API_KEY, LOGIN_PASSWORD])
    page.reload()
    page.get_by_role("row", name=re.compile("Legacy CRM")).wait_for()
    assert_no_secrets(page, [API_KEY, LOGIN_PASSWORD])

    # The connection form offers them by name, and holds no secret either.
    page.goto("/connections/new")
    page.get_by_label("URL", exact=True).fill("https://crm.example.com/leads")
    picker = page.get_by_label("Credential", exact=True)
    expect(picker.locator("option", has_text="CRM production (HubSpot)")).to_have_count(1)
    picker.select_option(label="CRM production (HubSpot)")
    expect(page.get_by_test_id("preview")).to_contain_text("Your API key is added too")
    assert_no_secrets(page, [API_KEY, LOGIN_PASSWORD])

    page.goto("/credentials")
    legacy = page.get_by_role("row", name=re.compile("Legacy CRM"))
    legacy.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete credential").click()
    expect(legacy).to_have_count(0)
    page.reload()
    expect(page.get_by_role("row", name=re.compile("CRM production"))).to_be_visible()
    expect(legacy).to_have_count(0)


def test_an_account_is_connected_with_oauth(page, mesh_up: Mesh, oauth_provider: OAuthServer):
    sign_up_in_browser(page)
    page.goto("/credentials")
    # Off to the provider (which consents at once) and back through the gateway's callback.
    connect_with_oauth(page, "Work CRM")
    page.wait_for_url(re.compile(r".*/credentials/[^/?]+\?oauth=connected$"))
    credential_id = path_of(page.url).split("?")[0].rsplit("/", 1)[1]
    expect(page.get_by_text("Your account is connected.")).to_be_visible()
    row = page.get_by_role("row", name=re.compile("Work CRM"))
    expect(row).to_contain_text("OAuth")
    expect(row).to_contain_text("crm")
    expect(row).to_contain_text("active")
    expect(row).to_have_attribute("aria-current", "true")
    check_page(page, "credentials-oauth-connected")
    assert_no_secrets(page, [oauth_provider.client_secret])
    assert credential_id

    page.goto("/credentials?oauth_error=OAUTH_DENIED")
    expect(page.get_by_text("access was not granted")).to_be_visible()


def test_a_credential_that_needs_reconnecting_is_reconnected(
    page, mesh_up: Mesh, oauth_provider: OAuthServer, receiver: SharedReceiver
):
    with mesh_up.client() as api:
        address = register_and_login(api)
        sign_in_in_browser(page, address)
        page.goto("/credentials")
        connect_with_oauth(page, "Sales CRM")
        page.wait_for_url(re.compile(r".*/credentials/[^/?]+\?oauth=connected$"))
        credential_id = path_of(page.url).split("?")[0].rsplit("/", 1)[1]
        # The provider takes the access back: the next delivery's refresh is refused.
        connection = create(
            api, action=action(oauth_provider.api_url, method="GET", credential_id=credential_id)
        )
        oauth_provider.expire_access_tokens()
        oauth_provider.revoke_refresh_tokens()
        assert finished(api, start_run(api, connection["id"]))["status"] == "failed"
        assert api.get(f"/v1/credentials/{credential_id}").json()["status"] == "needs_reconnect"

        page.goto("/credentials")
        row = page.get_by_role("row", name=re.compile("Sales CRM"))
        expect(row).to_contain_text("needs reconnect")
        check_page(page, "credentials-needs-reconnect")
        row.get_by_role("button", name="Reconnect").click()
        page.wait_for_url(re.compile(r".*/credentials/[^/?]+\?oauth=connected$"))
        expect(page.get_by_text("Your account is connected.")).to_be_visible()
        # The same credential, its tokens replaced: the connection that uses it delivers again.
        assert path_of(page.url).split("?")[0].rsplit("/", 1)[1] == credential_id
        current = page.locator("tr[aria-current=true]")
        expect(current).to_contain_text("Sales CRM")
        expect(current).to_contain_text("active")
        expect(page.get_by_role("row", name=re.compile("Sales CRM"))).to_have_count(1)
        assert finished(api, start_run(api, connection["id"]))["status"] == "succeeded"
