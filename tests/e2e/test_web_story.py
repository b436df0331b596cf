"""One person's whole story in the browser, as the product is meant to be used: sign up and in,
an API key, a webhook connection to their CRM checked in the preview, leads sent by their form
from outside the browser and watched as they arrive, a failed delivery read and retried, the
notification read, the password changed, other sessions ended, their data exported and their
account deleted. Each step through the pages alone, found by their visible labels."""

from __future__ import annotations

import json
import re
import ssl

import httpx
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, Mesh, SharedReceiver, sign_up_in_browser
from tests.e2e.web import assert_no_secrets, path_of

NEW_PASSWORD = "a longer phrase for the story 2"
API_KEY = "sk_live_story_4f9a1c2e7b"
TEMPLATE = {"email": "{{ body.email }}", "name": "{{ body.name }}", "source": "website"}
WAIT = 20_000  # ms: a delivery, then the page's next refresh


def test_a_whole_user_story_in_the_browser(
    page, browser_context, mesh_up: Mesh, receiver: SharedReceiver
):
    address = sign_up_in_browser(page)

    # An API key for the CRM: stored, listed, never shown again.
    page.get_by_role("link", name="Credentials").click()
    adding = page.get_by_role("form", name="Add an API key")
    adding.get_by_label("Name", exact=True).fill("CRM production")
    adding.get_by_label("Provider", exact=True).fill("ExampleCRM")
    adding.get_by_label("API key", exact=True).fill(API_KEY)
    adding.get_by_role("button", name="Add API key").click()
    expect(page.get_by_role("row", name=re.compile("CRM production"))).to_be_visible()
    assert_no_secrets(page, [API_KEY, PASSWORD])

    # A webhook connection to the CRM, its request checked in the preview, the key never in it.
    crm = receiver.path("story")
    page.get_by_role("link", name="Connections").click()
    page.get_by_role("link", name="New connection").first.click()
    page.get_by_label("Name", exact=True).fill("Website form to CRM")
    page.get_by_label("Trigger", exact=True).select_option("Webhook")
    page.get_by_label("URL", exact=True).fill(receiver.https_url(crm))
    page.get_by_label("Credential", exact=True).select_option(label="CRM production (ExampleCRM)")
    page.get_by_label("Body template", exact=True).fill(json.dumps(TEMPLATE))
    preview = page.get_by_test_id("preview")
    expect(preview).to_contain_text('"source": "website"')
    # Where the key goes is inside its sealed secret: the preview says it is added, unseen.
    expect(preview).to_contain_text("Your API key is added too")
    assert API_KEY not in preview.inner_text()
    page.get_by_role("button", name="Create connection").click()
    page.get_by_role("heading", name="Website form to CRM").wait_for()
    webhook_url = page.locator(".shown-once .secret").inner_text()
    assert webhook_url.startswith(f"{mesh_up.base_url}/hooks/")

    # The form sends leads from outside the browser; the activity page shows them arrive and
    # succeed without a reload.
    page.get_by_role("link", name="Activity").click()
    expect(page.get_by_text("No runs yet")).to_be_visible()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(mesh_up.tls_cert))) as form:
        for name in ("Ada Lovelace", "Lin Wei"):
            sent = form.post(webhook_url, json={"email": "lead@example.com", "name": name})
            assert sent.status_code == 202, sent.text
        runs = page.get_by_role("table", name="Runs")
        expect(runs.get_by_text("succeeded")).to_have_count(2, timeout=WAIT)

        # One run's page: the attempt's request as the CRM received it, the key as a header.
        runs.get_by_role("link").first.click()  # a run's time links to its page
        page.wait_for_url("**/runs/*")
        attempt = page.get_by_role("region", name="Attempt 1")
        expect(attempt).to_contain_text(receiver.https_url(crm))
        expect(attempt).to_contain_text('"source": "website"')
        assert receiver.wait_to(crm, 2)[0].headers["x-api-key"] == API_KEY
        assert_no_secrets(page, [API_KEY])

        # The CRM goes down: the next lead fails, a notification says so, a retry delivers it.
        receiver.answer(crm, 503, {"error": "maintenance"})
        failing = form.post(webhook_url, json={"email": "grace@example.com", "name": "Grace"})
        assert failing.status_code == 202, failing.text
    failed_run = failing.json()["run_id"]
    page.goto(f"/runs/{failed_run}")
    expect(page.get_by_text("failed").first).to_be_visible(timeout=WAIT)
    receiver.answer(crm, 200, {"ok": True})
    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(re.compile(r".*/runs/(?!" + failed_run + r")[^/]+$"))
    expect(page.get_by_text("succeeded").first).to_be_visible(timeout=WAIT)

    # The notification of the failure, counted in the navigation, read.
    unread = page.get_by_role("navigation", name="Main").locator(".badge")
    expect(unread).to_be_visible(timeout=WAIT)
    page.get_by_role("link", name=re.compile("^Notifications")).click()
    page.get_by_role("button", name="Mark as read").first.click()
    expect(page.get_by_role("button", name="Mark as read")).to_have_count(0, timeout=WAIT)
    expect(unread).to_have_count(0)

    # Another device signed in; the password changed; every other session ended.
    with mesh_up.client() as phone:
        signed = phone.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert signed.status_code == 200
        page.get_by_role("link", name="Account").click()
        page.get_by_label("Current password", exact=True).fill(PASSWORD)
        page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        page.get_by_role("button", name="Change password").click()
        expect(page.get_by_text("Your password is changed")).to_be_visible()
        assert phone.get("/v1/me").status_code == 401
    with mesh_up.client() as laptop:
        signed = laptop.post("/v1/sessions", json={"email": address, "password": NEW_PASSWORD})
        assert signed.status_code == 200
        page.reload()
        page.get_by_role("button", name="Sign out everywhere else").click()
        expect(page.get_by_text("Signed out of 1 other session")).to_be_visible()
        assert laptop.get("/v1/me").status_code == 401
    assert_no_secrets(page, [PASSWORD, NEW_PASSWORD, API_KEY, webhook_url])

    # Their data, downloaded: the account, the credential without its key, the connection.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download my data").click()
    exported = download.value.path().read_text()
    assert address in exported and "Website form to CRM" in exported
    assert "CRM production" in exported and API_KEY not in exported

    # The account deleted with the password: signed out, and sign-in refused.
    deleting = page.get_by_role("region", name="Delete account")
    deleting.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    deleting.get_by_role("button", name="Delete my account").click()
    page.get_by_role("button", name="Yes, delete my account").click()
    page.wait_for_url("**/sign-in**")
    assert path_of(page.url).startswith("/sign-in")
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert path_of(page.url).startswith("/sign-in")
