"""The web app as the gateway serves it: every page at its own address (deep links survive a
reload), strict security headers, hashed bundles cached for a year, the API still problem+json
beside it; and the first steps of a person in a browser: sign up, sign in, sign out."""

from __future__ import annotations

import os
import re
import signal

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, Mesh, new_email, sign_up_in_browser
from tests.e2e.web import assert_no_secrets, check_page, field_error, path_of

APP_PATHS = [
    "/", "/sign-in", "/sign-up", "/password-reset?token=abc", "/unsubscribe?token=abc",
    "/deletion-cancel?token=abc", "/connections", "/connections/new", "/connections/some-id",
    "/credentials", "/activity", "/runs/some-id", "/webhook-log", "/notifications", "/account",
]  # fmt: skip


@pytest.mark.parametrize("path", APP_PATHS)
def test_every_page_of_the_app_is_served_at_its_address(api, path):
    answer = api.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert '<div id="app">' in answer.text
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["strict-transport-security"].startswith("max-age=")


def test_bundles_are_hashed_and_cached_for_a_year(api):
    page = api.get("/sign-in").text
    assets = re.findall(r'(?:src|href)="(/assets/[^"]+)"', page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        answer = api.get(asset)
        assert answer.status_code == 200, asset
        assert re.search(r"-[A-Z0-9]{8}\.(js|css)$", asset), asset
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert api.get("/assets/app-NOTTHERE.js").status_code == 404


def test_the_api_keeps_its_answers_beside_the_app(api):
    unknown = api.get("/v1/no-such-resource")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert api.put("/v1/connections").status_code == 405
    # A path that is no page: the app (which says "Page not found"), with 404.
    missing = api.get("/no/such/page")
    assert missing.status_code == 404 and '<div id="app">' in missing.text
    # Pages are read, never posted to.
    assert api.post("/connections").status_code == 405


def test_sign_up_sign_in_and_out_in_the_browser(page):
    address = new_email("web")
    page.goto("/")
    page.get_by_role("heading", name="Sign in").wait_for()
    check_page(page, "sign-in")
    page.get_by_role("link", name="Create an account").click()
    page.get_by_role("heading", name="Create an account").wait_for()
    check_page(page, "sign-up")
    # A refused password is shown at its field, in the API's words.
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_role("button", name="Create account").click()
    assert "at least" in field_error(page, "Password").inner_text()
    sign_up_in_browser(page, address)
    # Deep links survive a reload; the navigation marks where one is.
    page.goto("/activity")
    page.reload()
    page.get_by_role("heading", name="Activity").wait_for()
    assert page.get_by_role("link", name="Activity").get_attribute("aria-current") == "page"
    assert_no_secrets(page, [PASSWORD])
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    page.goto("/credentials")
    page.wait_for_url(re.compile(r".*/sign-in\?next=%2Fcredentials"))
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/credentials")
    assert path_of(page.url) == "/credentials"


def test_remember_my_email_fills_the_form_next_time(page):
    address = new_email("web")
    sign_up_in_browser(page, address)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Remember my e-mail").check()
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/connections")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/sign-in")
    assert page.get_by_label("E-mail", exact=True).input_value() == address
    assert page.get_by_label("Remember my e-mail").is_checked()


def test_the_keyboard_alone_signs_in_and_moves_between_pages(page, api):
    address = new_email("keys")
    assert (
        api.post("/v1/accounts", json={"email": address, "password": PASSWORD}).status_code == 201
    )
    page.goto("/sign-in")
    page.get_by_role("heading", name="Sign in").wait_for()
    # The page's heading has the focus on arrival; the first Tab is the first field.
    expect(page.get_by_role("heading", name="Sign in")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("E-mail", exact=True)).to_be_focused()
    page.keyboard.type(address)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/connections")
    expect(page.get_by_role("heading", name="Connections", exact=True)).to_be_focused()
    page.keyboard.press("Shift+Tab")  # back from the heading into the navigation
    # The navigation's links are reached with Tab and followed with Enter.
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Activity":
            break
    page.keyboard.press("Enter")
    page.wait_for_url("**/activity")
    # The new page's heading has the focus, so a screen reader announces where one is.
    expect(page.get_by_role("heading", name="Activity")).to_be_focused()


def test_a_page_that_does_not_exist_says_so(page):
    page.goto("/no/such/page")
    page.get_by_role("heading", name="Page not found").wait_for()
    check_page(page, "not-found")
    page.get_by_role("link", name="Go to the start page").click()
    page.get_by_role("heading", name="Sign in").wait_for()


def test_an_outage_says_so_and_the_page_comes_back_on_retry(page, mesh_up: Mesh):
    sign_up_in_browser(page)
    identity = mesh_up.pid("services.identity")
    os.kill(identity, signal.SIGSTOP)  # as if hung: the gateway's calls to it time out
    try:
        page.goto("/connections")
        outage = page.get_by_role("alert")
        expect(outage).to_contain_text("could not load your account", timeout=30_000)
        expect(outage.get_by_role("button", name="Try again")).to_be_visible()
        check_page(page, "outage")
    finally:
        os.kill(identity, signal.SIGCONT)
    outage.get_by_role("button", name="Try again").click()
    expect(page.get_by_role("heading", name="Connections")).to_be_visible(timeout=30_000)
