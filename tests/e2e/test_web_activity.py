"""The activity pages in a browser: runs appearing and finishing while the list is open, its
filters in the address, a run's event and attempts, a retry, the webhook log, notifications with
the navigation's unread count, and a run whose details retention purged."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    PASSWORD,
    Mesh,
    SharedReceiver,
    action,
    create,
    finished,
    sign_up_in_browser,
    start_run,
)
from tests.e2e.web import assert_no_secrets, check_page, path_of

WAIT = 20_000  # ms: a run's delivery, then the next refresh of the page


@pytest.fixture(scope="module")
def mesh_up(purging_mesh: Mesh) -> Mesh:
    """This file's own mesh: its last test purges as of eight days on."""
    return purging_mesh


@pytest.fixture
def account(page) -> str:
    """A new person's address, signed in in the browser through the pages."""
    return sign_up_in_browser(page)


@pytest.fixture
def owner(account: str, mesh_up: Mesh) -> Iterator[httpx.Client]:
    """The same person, signed in with httpx."""
    with mesh_up.client() as client:
        sign_in(client, account)
        yield client


def sign_in(client: httpx.Client, address: str) -> None:
    signed = client.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert signed.status_code == 200, signed.text
    client.headers["X-CSRF-Token"] = client.cookies["lm_csrf"]


def connection_to(
    owner: httpx.Client, receiver: SharedReceiver, status: int = 200, **fields: Any
) -> tuple[dict, str]:
    """A connection delivering to a receiver path of its own that answers `status`: (it, path).
    A failing one has one attempt, so its run fails at once."""
    path = receiver.path("web-activity")
    if status != 200:
        receiver.answer(path, status, {"error": "the CRM is down"})
        fields.setdefault("max_attempts", 1)
    body = {"email": "{{ body.email }}"}
    return create(
        owner, action=action(receiver.https_url(path), body_template=body), **fields
    ), path


def runs_table(page):
    return page.get_by_role("table", name="Runs")


def status_of(page, connection: dict):
    row = runs_table(page).get_by_role("row").filter(has_text=connection["name"])
    return row.get_by_role("cell").nth(3)


def test_runs_appear_and_turn_succeeded_without_a_reload(page, owner, receiver):
    connection, path = connection_to(owner, receiver)
    # The delivery takes longer than the idle list's refresh (5 s): one refresh sees it under way.
    receiver.answer(path, 200, {"ok": True}, delay=8)
    page.goto("/activity")
    expect(page.get_by_text("No runs yet")).to_be_visible()
    expect(page.get_by_role("link", name="Go to your connections")).to_have_attribute(
        "href", "/connections"
    )
    check_page(page, "activity-empty")
    page.evaluate("window.stillTheSamePage = true")

    start_run(owner, connection["id"], {"email": "ann@example.com"})
    expect(status_of(page, connection)).to_have_text(re.compile("queued|running"), timeout=WAIT)
    expect(status_of(page, connection)).to_have_text("succeeded", timeout=WAIT)
    assert page.evaluate("window.stillTheSamePage === true"), "the page was reloaded"
    row = runs_table(page).get_by_role("row").filter(has_text=connection["name"])
    expect(row.get_by_role("cell").nth(2)).to_have_text("manual")
    expect(row.get_by_role("cell").nth(4)).to_have_text(re.compile(r"\d(\.\d)? s$"))
    expect(row.get_by_role("link", name=connection["name"])).to_have_attribute(
        "href", f"/connections/{connection['id']}"
    )
    check_page(page, "activity")


def test_filters_narrow_the_runs_and_live_in_the_address(page, owner, receiver):
    good, _ = connection_to(owner, receiver)
    bad, _ = connection_to(owner, receiver, status=500)
    for connection in (good, bad):
        finished(owner, start_run(owner, connection["id"], {"email": "ann@example.com"}))
    page.goto("/activity")
    rows = runs_table(page).locator("tbody tr")
    expect(rows).to_have_count(2)

    page.get_by_label("Status", exact=True).select_option("failed")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(bad["name"])
    assert "status=failed" in path_of(page.url)
    page.reload()
    expect(page.get_by_label("Status", exact=True)).to_have_value("failed")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(bad["name"])

    page.get_by_label("Status", exact=True).select_option("")
    page.get_by_label("Connection", exact=True).select_option(label=good["name"])
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(good["name"])
    assert f"connection_id={good['id']}" in path_of(page.url)
    # Back from a run keeps the filters.
    rows.first.get_by_role("link").first.click()
    page.wait_for_url("**/runs/**")
    page.go_back()
    expect(page.get_by_label("Connection", exact=True)).to_have_value(good["id"])
    expect(rows).to_have_count(1)

    # Dates: from tomorrow there is nothing; clearing the filters shows every run again.
    today = date.fromisoformat(page.evaluate("new Date().toLocaleDateString('sv')"))
    page.get_by_label("From", exact=True).fill((today + timedelta(days=1)).isoformat())
    expect(page.get_by_text("No runs match these filters.")).to_be_visible()
    expect(page.locator("p.empty")).to_have_text("No runs match these filters. Show all runs")
    assert "from=" in path_of(page.url)
    page.get_by_role("button", name="Show all runs").click()
    expect(rows).to_have_count(2)
    page.get_by_label("From", exact=True).fill(today.isoformat())
    page.get_by_label("To", exact=True).fill(today.isoformat())
    expect(rows).to_have_count(2)


def test_the_connection_filter_offers_every_connection_past_the_apis_page(page, owner, receiver):
    # 101 connections: more than the API's largest page (100), so the names take two pages.
    made = [connection_to(owner, receiver)[0] for _ in range(101)]
    page.goto("/activity")
    options = page.get_by_label("Connection", exact=True).locator("option")
    expect(options).to_have_count(102)  # "All connections" and every one
    expect(options.last).to_have_text(made[0]["name"])  # the oldest, listed last


def test_more_runs_than_a_page_load_with_load_more(page, owner, receiver):
    connection, _ = connection_to(owner, receiver)
    started = [start_run(owner, connection["id"], {"email": f"{n}@example.com"}) for n in range(27)]
    for run_id in started:
        finished(owner, run_id)
    page.goto("/activity")
    rows = runs_table(page).locator("tbody tr")
    expect(rows).to_have_count(25)
    page.get_by_role("button", name="Load more").click()
    expect(rows).to_have_count(27)
    expect(page.get_by_role("button", name="Load more")).to_have_count(0)
    # Newest first: the last row is the first run.
    expect(rows.last.get_by_role("link").first).to_have_attribute("href", f"/runs/{started[0]}")


def test_a_run_shows_its_event_and_its_attempts_request_and_response(page, owner, receiver):
    connection, path = connection_to(owner, receiver)
    receiver.answer(path, 200, {"contact_id": 7})
    run_id = start_run(owner, connection["id"], {"email": "ann@example.com"})
    assert finished(owner, run_id)["status"] == "succeeded"
    page.goto("/activity")
    runs_table(page).locator("tbody tr").first.get_by_role("link").first.click()
    page.wait_for_url(f"**/runs/{run_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Run of {connection['name']}")
    expect(page.locator("dl.facts")).to_contain_text("succeeded")
    event = page.get_by_role("heading", name="Incoming event").locator(
        "xpath=following-sibling::pre[1]"
    )
    expect(event).to_contain_text('"email": "ann@example.com"')
    attempt = page.get_by_role("region", name="Attempt 1")
    expect(attempt).to_contain_text(f"POST {receiver.https_url(path)}")
    expect(attempt).to_contain_text('"email": "ann@example.com"')  # the request's body
    expect(attempt).to_contain_text("Status 200")
    expect(attempt).to_contain_text('"contact_id": 7')  # the response's body
    expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    check_page(page, "run")


def test_a_failed_run_is_retried_as_a_new_run(page, owner, receiver):
    connection, path = connection_to(owner, receiver, status=500)
    run_id = start_run(owner, connection["id"], {"email": "ann@example.com"})
    assert finished(owner, run_id)["status"] == "failed"
    page.goto(f"/runs/{run_id}")
    expect(page.locator("dl.facts")).to_contain_text("failed")
    expect(page.get_by_role("region", name="Attempt 1")).to_contain_text("Status 500")
    receiver.answer(path, 200, {"ok": True})  # the cause is fixed
    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(re.compile(r"/runs/(?!" + re.escape(run_id) + r"$)[^/]+$"))
    retried = path_of(page.url).rsplit("/", 1)[1]
    assert retried != run_id
    expect(page.locator("dl.facts")).to_contain_text("succeeded", timeout=WAIT)
    assert finished(owner, retried)["event"]["body"] == {"email": "ann@example.com"}


def notices(owner: httpx.Client, count: int) -> list[dict]:
    deadline = time.monotonic() + 15
    while len(items := owner.get("/v1/notifications").json()["items"]) < count:
        assert time.monotonic() < deadline, f"{len(items)} of {count} notifications"
        time.sleep(0.1)
    return items


def test_a_failure_is_a_notification_counted_in_the_navigation_until_read(page, owner, receiver):
    connection, _ = connection_to(owner, receiver, status=500)
    run_id = start_run(owner, connection["id"], {"email": "ann@example.com"})
    assert finished(owner, run_id)["status"] == "failed"
    [notice] = notices(owner, 1)
    page.goto("/notifications")
    badge = page.get_by_role("navigation", name="Main").locator(".badge")
    expect(badge).to_have_text("1")
    item = page.get_by_role("list", name="Notifications").get_by_role("listitem")
    expect(item).to_have_count(1)
    expect(item).to_contain_text("Unread")
    expect(item).to_contain_text(notice["message"])
    expect(item.get_by_role("link", name="View run")).to_have_attribute("href", f"/runs/{run_id}")
    check_page(page, "notifications")

    item.get_by_role("button", name="Mark as read").click()
    expect(badge).to_have_count(0)
    expect(item).not_to_contain_text("Unread")
    expect(item.get_by_role("button", name="Mark as read")).to_have_count(0)
    assert owner.get("/v1/notifications").json()["items"][0]["read"] is True

    page.get_by_label("Show unread only").check()
    page.wait_for_url("**/notifications?unread=true")
    expect(page.get_by_text("Nothing unread")).to_be_visible()


def test_the_webhook_log_lists_a_webhook_without_its_secrets(page, owner, mesh_up, receiver):
    connection, _ = connection_to(owner, receiver, trigger={"type": "webhook"})
    token = connection["webhook_url"].rsplit("/", 1)[1]
    with mesh_up.client() as outsider:
        sent = outsider.post(
            connection["webhook_url"],
            json={"email": "ann@example.com"},
            headers={"X-Api-Key": "third-party-key-secret"},
        )
    assert sent.status_code == 202, sent.text
    run_id = sent.json()["run_id"]
    finished(owner, run_id)
    page.goto("/webhook-log")
    row = page.get_by_role("table", name="Webhooks received").locator("tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(connection["name"])
    expect(row).to_contain_text("POST")
    expect(row).to_contain_text("x-api-key")  # named as hidden, never shown
    expect(row.get_by_role("link", name="View run")).to_have_attribute("href", f"/runs/{run_id}")
    assert_no_secrets(page, [token, "third-party-key-secret"])
    check_page(page, "webhook-log")


# Last in this file: the purge destroys today's day keys of this file's mesh.
def test_a_purged_run_says_so_and_cannot_be_retried(page, account, owner, mesh_up, receiver):
    connection, _ = connection_to(owner, receiver, status=500)
    run_id = start_run(owner, connection["id"], {"email": "ann@example.com"})
    assert finished(owner, run_id)["status"] == "failed"
    purged = mesh_up.leadmesh("retention", "run", "--as-of", "+8d")
    assert purged.returncode == 0, purged.stderr
    # Eight days on, the sessions have passed their idle deadline too, and are purged.
    page.goto(f"/runs/{run_id}")
    page.get_by_label("E-mail", exact=True).fill(account)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**/runs/{run_id}")
    sign_in(owner, account)
    expect(page.get_by_text("Details purged by retention on")).to_be_visible()
    expect(page.get_by_role("heading", name="Incoming event")).to_have_count(0)
    expect(page.get_by_role("heading", name="Attempts")).to_have_count(0)
    assert "ann@example.com" not in page.content()
    page.get_by_role("button", name="Retry").click()
    refused = owner.post(f"/v1/runs/{run_id}/retry")
    expect(page.get_by_role("alert")).to_have_text(refused.json()["detail"])
    check_page(page, "run-purged")
    assert refused.status_code == 409 and refused.json()["code"] == "RUN_DETAILS_PURGED"
