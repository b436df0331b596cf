"""Connections in the browser: made with a template checked in the server's preview, a broken
template shown at its field, the webhook URL shown once (copied, gone after a reload) and fed
from outside the browser, the list showing the last run; pause, resume, run now, rotate, the
signing secret, a schedule, and delete."""

from __future__ import annotations

import json
import re
import ssl

import httpx
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
)
from tests.e2e.web import assert_no_secrets, check_page, field_error, path_of

TEMPLATE = {"email": "{{ body.email }}", "full_name": "{{ body.name }}", "source": "web"}


def third_party(mesh: Mesh) -> httpx.Client:
    """A form service posting leads: no session, the gateway's certificate trusted."""
    return httpx.Client(verify=ssl.create_default_context(cafile=str(mesh.tls_cert)), timeout=30)


def test_a_webhook_connection_made_in_the_browser_delivers_what_its_preview_showed(
    page, browser_context, mesh_up: Mesh, receiver: SharedReceiver
):
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_up_in_browser(page)
    expect(page.get_by_text("You have no connections yet")).to_be_visible()
    check_page(page, "connections-empty")
    page.get_by_role("link", name="New connection").first.click()
    page.get_by_role("heading", name="New connection").wait_for()
    destination = receiver.path("web")
    page.get_by_label("Name", exact=True).fill("Website form to CRM")
    page.get_by_label("Trigger", exact=True).select_option("Webhook")
    page.get_by_label("URL", exact=True).fill(receiver.https_url(destination))
    page.get_by_label("Headers", exact=True).fill("X-Source: leadmesh")
    page.get_by_label("Body template", exact=True).fill(json.dumps(TEMPLATE))
    preview = page.get_by_test_id("preview")
    expect(preview).to_contain_text('"email": "ada@example.com"')
    expect(preview).to_contain_text('"full_name": "Ada Lovelace"')
    check_page(page, "connection-new")

    # A broken template is shown at its field, with where it breaks; a broken sample at its own.
    page.get_by_label("Body template", exact=True).fill('{"email": "{{ body.email"}')
    page.get_by_role("button", name="Create connection").click()
    expect(field_error(page, "Body template")).to_contain_text(
        re.compile(r"unclosed .* line 1, column \d+")
    )
    page.get_by_label("Sample event", exact=True).fill('{"email": ')
    expect(field_error(page, "Sample event")).to_contain_text("not valid JSON")
    page.get_by_label("Sample event", exact=True).fill('{"email": "grace@example.com"}')
    page.get_by_label("Body template", exact=True).fill(json.dumps(TEMPLATE))
    expect(preview).to_contain_text('"email": "grace@example.com"')
    # So is a URL the preview refuses, at the URL field, and it goes once the URL is right.
    page.get_by_label("URL", exact=True).fill("ftp://crm.example/leads")
    expect(field_error(page, "URL")).to_be_visible()
    page.get_by_label("URL", exact=True).fill(receiver.https_url(destination))
    expect(preview).to_contain_text('"email": "grace@example.com"')
    expect(page.get_by_label("URL", exact=True)).not_to_have_attribute("aria-invalid", "true")

    page.get_by_role("button", name="Create connection").click()
    page.wait_for_url(re.compile(r".*/connections/(?!new$)[^/]+$"))
    connection_id = path_of(page.url).rsplit("/", 1)[1]
    page.get_by_role("heading", name="Website form to CRM").wait_for()
    expect(page.get_by_text("Copy it now: it will not be shown again")).to_be_visible()
    webhook_url = page.locator(".shown-once .secret").inner_text()
    assert webhook_url.startswith(f"{mesh_up.base_url}/hooks/")
    page.get_by_role("button", name="Copy webhook URL").click()
    expect(page.get_by_text("Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == webhook_url
    check_page(page, "connection-detail-new")
    assert_no_secrets(page, [])  # the URL lives in the page's state, never in storage
    assert webhook_url not in json.dumps(page.evaluate("() => Object.entries(sessionStorage)"))

    page.reload()
    page.get_by_role("heading", name="Website form to CRM").wait_for()
    expect(page.get_by_role("button", name="Rotate webhook URL")).to_be_visible()
    assert_no_secrets(page, [webhook_url])

    with third_party(mesh_up) as form:
        sent = form.post(webhook_url, json={"email": "lin@example.com", "name": "Lin Wei"})
        assert sent.status_code == 202, sent.text
    delivered = receiver.wait_to(destination)[0]
    assert delivered.json() == {"email": "lin@example.com", "full_name": "Lin Wei", "source": "web"}
    assert delivered.headers["x-source"] == "leadmesh"

    page.goto("/connections")
    row = page.get_by_role("row", name=re.compile("Website form to CRM"))
    expect(row).to_contain_text("Webhook")
    expect(row.get_by_role("link", name="succeeded")).to_have_attribute(
        "href", f"/runs/{sent.json()['run_id']}"
    )
    check_page(page, "connections-list")
    page.get_by_role("link", name="Website form to CRM").click()
    page.wait_for_url(f"**/connections/{connection_id}")
    assert_no_secrets(page, [webhook_url])


def test_pause_resume_run_now_and_delete_a_connection(
    page, mesh_up: Mesh, receiver: SharedReceiver
):
    destination = receiver.path("manual")
    with mesh_up.client() as api:
        address = register_and_login(api)
        made = create(
            api,
            name="Manual CRM push",
            action=action(receiver.https_url(destination), body_template={"lead": "{{ body }}"}),
        )
        sign_in_in_browser(page, address)
        expect(page.get_by_role("row", name=re.compile("Manual CRM push"))).to_contain_text("never")
        page.goto(f"/connections/{made['id']}")
        page.get_by_role("heading", name="Manual CRM push").wait_for()
        facts = page.locator("dl.facts")
        expect(facts).to_contain_text("Manual")

        page.get_by_role("button", name="Pause").click()
        expect(facts).to_contain_text("paused")
        assert api.get(f"/v1/connections/{made['id']}").json()["status"] == "paused"
        page.get_by_role("button", name="Resume").click()
        expect(facts).to_contain_text("active")

        payload = page.get_by_label("Payload (JSON)", exact=True)
        payload.fill("{not json")
        page.get_by_role("button", name="Run now").click()
        expect(field_error(page, "Payload (JSON)")).to_contain_text("not valid JSON")
        payload.fill('{"email": "ada@example.com", "plan": "pro"}')
        page.get_by_role("button", name="Run now").click()
        link = page.get_by_role("link", name="See the run")
        expect(link).to_have_attribute("href", re.compile(r"^/runs/.+"))
        run_id = link.get_attribute("href").rsplit("/", 1)[1]
        assert finished(api, run_id)["status"] == "succeeded"
        # The page follows the run it started until its outcome is known, without a reload.
        expect(facts.get_by_role("link", name="succeeded")).to_have_attribute(
            "href", f"/runs/{run_id}"
        )
        lead = {"email": "ada@example.com", "plan": "pro"}
        assert receiver.wait_to(destination)[0].json() == {"lead": lead}
        check_page(page, "connection-detail")

        page.get_by_role("button", name="Delete connection").click()
        dialog = page.get_by_role("dialog", name="Delete “Manual CRM push”?")
        dialog.get_by_role("button", name="Delete").click()
        page.wait_for_url("**/connections")
        expect(page.get_by_text("You have no connections yet")).to_be_visible()
        assert api.get(f"/v1/connections/{made['id']}").status_code == 404


def test_rotating_the_url_and_setting_a_signing_secret(
    page, mesh_up: Mesh, receiver: SharedReceiver
):
    with mesh_up.client() as api, third_party(mesh_up) as form:
        address = register_and_login(api)
        made = create(
            api, trigger={"type": "webhook"}, action=action(receiver.https_url(receiver.path()))
        )
        sign_in_in_browser(page, address)
        page.goto(f"/connections/{made['id']}")
        page.get_by_role("button", name="Rotate webhook URL").click()
        page.get_by_role("dialog").get_by_role("button", name="Rotate").click()
        expect(page.get_by_text("Copy it now: it will not be shown again")).to_be_visible()
        rotated = page.locator(".shown-once .secret").inner_text()
        assert rotated != made["webhook_url"]
        assert form.post(made["webhook_url"], json={}).status_code == 404
        assert form.post(rotated, json={}).status_code == 202

        page.get_by_role("button", name="Set a signing secret").click()
        page.get_by_role("dialog").get_by_role("button", name="Make secret").click()
        secret = page.locator(".shown-once .secret").last.inner_text()
        assert len(secret) >= 32
        expect(page.get_by_role("button", name="Remove signing secret")).to_be_visible()
        assert form.post(rotated, json={}).status_code == 401  # unsigned now
        page.reload()
        page.get_by_role("heading", name=made["name"]).wait_for()
        assert_no_secrets(page, [secret, rotated])


def test_a_connection_is_edited_to_a_schedule(page, mesh_up: Mesh, receiver: SharedReceiver):
    with mesh_up.client() as api:
        address = register_and_login(api)
        made = create(api, action=action(receiver.https_url(receiver.path())))
        sign_in_in_browser(page, address)
        page.goto(f"/connections/{made['id']}")
        page.get_by_label("Trigger", exact=True).select_option("Schedule")
        page.get_by_label("Repeat", exact=True).select_option("By cron expression")
        page.get_by_label("Cron expression", exact=True).fill("not a cron")
        page.get_by_role("button", name="Save changes").click()
        expect(field_error(page, "Cron expression")).to_be_visible()
        page.get_by_label("Repeat", exact=True).select_option("Every so many seconds")
        page.get_by_label("Interval (seconds)", exact=True).fill("3600")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_text("Your changes are saved.")).to_be_visible()
        expect(page.locator("dl.facts")).to_contain_text("Schedule: every 3600 s")
        trigger = api.get(f"/v1/connections/{made['id']}").json()["trigger"]
        assert trigger == {"type": "schedule", "cron": None, "every_seconds": 3600}
