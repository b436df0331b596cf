"""The web app's account pages in a browser, against the real mesh and its real SMTP inbox: the
links mails carry (password reset, unsubscribe, deletion cancel), the account page's every
section, and the ways a session ends under a person's feet (expiry, a CSRF mismatch)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from playwright.sync_api import expect

from tests.e2e.conftest import (
    PASSWORD,
    Mesh,
    announced,
    new_email,
    register_and_login,
    sign_up_in_browser,
)
from tests.e2e.web import assert_no_secrets, check_page, field_error, path_of

NEW_PASSWORD = "a brand new passphrase 2026"


def link_in(mail, path: str) -> str:
    """The app's link at `path` in a mail's text, as a path with its query."""
    text = mail.get_body(("plain",)).get_content()
    found = re.search(rf"https://[^/\s]+({re.escape(path)}\?token=\S+)", text)
    assert found, f"no {path} link in the mail"
    return found[1]


def sign_in(page, address: str, password: str = PASSWORD) -> None:
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


@contextmanager
def second_session(mesh: Mesh, address: str) -> Iterator[httpx.Client]:
    """Another device signed in to the same account."""
    with mesh.client(headers={"User-Agent": "second-device/1.0"}) as other:
        signed = other.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        other.headers["X-CSRF-Token"] = other.cookies["lm_csrf"]
        yield other


def open_account(page) -> None:
    page.goto("/account")
    page.get_by_role("heading", name="Account", exact=True).wait_for()


# --- the links in mails ----------------------------------------------------------------------


def test_the_reset_link_from_the_mail_sets_a_new_password(page, api, inbox):
    address = new_email("reset")
    assert (
        api.post("/v1/accounts", json={"email": address, "password": PASSWORD}).status_code == 201
    )
    page.goto("/sign-in")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_role("heading", name="Forgot your password?").wait_for()
    check_page(page, "password-reset-request")
    # An address without an account gets the very same answer: the page tells nobody who is a user.
    page.get_by_label("E-mail", exact=True).fill(new_email("nobody"))
    page.get_by_role("button", name="Send reset link").click()
    expect(page.get_by_role("status")).to_contain_text("we have sent it an e-mail")
    page.goto("/password-reset")
    page.get_by_label("E-mail", exact=True).fill(address)
    page.get_by_role("button", name="Send reset link").click()
    expect(page.get_by_role("status")).to_contain_text("we have sent it an e-mail")
    check_page(page, "password-reset-sent")
    link = link_in(inbox.wait_for(address, "Reset your leadmesh password"), "/password-reset")
    token = link.split("token=", 1)[1]

    page.goto(link)
    page.get_by_role("heading", name="Choose a new password").wait_for()
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_role("button", name="Set new password").click()
    expect(field_error(page, "New password")).to_contain_text("at least")
    check_page(page, "password-reset-new")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    assert_no_secrets(page, [token, NEW_PASSWORD])
    page.get_by_role("button", name="Set new password").click()
    page.wait_for_url("**/sign-in?reset=1")
    expect(page.get_by_role("status")).to_contain_text("Your new password is set")
    sign_in(page, address, NEW_PASSWORD)
    page.wait_for_url("**/connections")

    # The link works once: a second use shows the API's reason and the way to a new link.
    page.goto(link)
    page.get_by_label("New password", exact=True).fill("yet another long passphrase")
    page.get_by_role("button", name="Set new password").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown, used or expired")
    check_page(page, "password-reset-expired")
    page.get_by_role("link", name="Ask for a new reset link").click()
    page.get_by_role("heading", name="Forgot your password?").wait_for()


def consents_of(client: httpx.Client) -> dict[str, bool]:
    return {c["purpose"]: c["granted"] for c in client.get("/v1/me/consents").json()["items"]}


def test_opening_the_unsubscribe_link_asks_and_only_the_button_unsubscribes(
    page, api, mesh_up, inbox
):
    register_and_login(api)
    mail = announced(api, mesh_up, inbox)
    # The mail's body links to the app's page (its List-Unsubscribe header to the API's POST).
    page.goto(link_in(mail, "/unsubscribe"))
    page.get_by_role("heading", name="Unsubscribe").wait_for()
    expect(page.get_by_role("button", name="Unsubscribe")).to_be_enabled()
    check_page(page, "unsubscribe")
    # A link scanner opening the mail's link changes nothing.
    assert consents_of(api)["new_features"] is True
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("status")).to_contain_text("You are unsubscribed")
    expect(page.get_by_role("status")).to_contain_text("new features")
    check_page(page, "unsubscribed")
    assert consents_of(api)["new_features"] is False
    assert consents_of(api)["execution_notifications"] is True

    page.goto("/unsubscribe?token=not-a-real-token")
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")


def test_the_deletion_cancel_link_lets_the_owner_sign_in_again(page, api, inbox):
    address = register_and_login(api)
    requested = api.request("DELETE", "/v1/me", json={"password": PASSWORD})
    assert requested.status_code == 202, requested.text
    link = link_in(inbox.wait_for(address, "will be deleted"), "/deletion-cancel")

    page.goto("/sign-in")
    sign_in(page, address)
    expect(page.get_by_role("alert")).to_be_visible()  # disabled: no way in
    page.goto(link)
    page.get_by_role("heading", name="Cancel the deletion of your account").wait_for()
    check_page(page, "deletion-cancel")
    page.get_by_role("button", name="Cancel the deletion").click()
    expect(page.get_by_role("status")).to_contain_text("Your account is active again")
    check_page(page, "deletion-cancelled")
    page.get_by_role("link", name="Sign in").click()
    sign_in(page, address)
    page.wait_for_url("**/connections")

    page.goto(link)  # once only
    page.get_by_role("button", name="Cancel the deletion").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown, used, or past the grace period")
    check_page(page, "deletion-cancel-invalid")


# --- the account page ------------------------------------------------------------------------

SECTIONS = [
    "Your account", "Plan", "Password", "Sessions", "Login history", "Consents",
    "Egress addresses", "Your data", "Delete account",
]  # fmt: skip


def test_the_account_page_shows_every_section_and_changes_the_password(page):
    address = sign_up_in_browser(page)
    page.get_by_role("link", name="Account").click()
    for title in SECTIONS:
        expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    overview = page.get_by_role("region", name="Your account")
    expect(overview).to_contain_text(address)
    expect(overview).to_contain_text("Free")
    history = page.get_by_role("region", name="Login history")
    expect(history.get_by_role("row").nth(1)).to_contain_text("Signed in")
    # The operator's terms (GET /v1/terms): the plans with their prices, the deletion periods.
    deletion = page.get_by_role("region", name="Delete account")
    expect(deletion).to_contain_text("it works for 14 days")
    expect(deletion).to_contain_text("erased within 60 days of your request. Only the accounting")
    offers = page.get_by_role("region", name="Plan").get_by_label("Plan", exact=True)
    expect(offers.locator("option")).to_have_text(["Free", "Pro — €29.00", "Business — €99.00"])
    check_page(page, "account")

    page.get_by_label("Current password", exact=True).fill("not my password at all")
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(field_error(page, "Current password")).to_contain_text("wrong")
    assert path_of(page.url) == "/account"
    check_page(page, "account-password-error")
    page.get_by_label("Current password", exact=True).fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_role("status").filter(has_text="Your password is changed")).to_be_visible()
    assert_no_secrets(page, [PASSWORD, NEW_PASSWORD])
    # This session goes on under its new token; signing in again takes the new password.
    page.reload()
    page.get_by_role("heading", name="Sessions").wait_for()
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url("**/sign-in")
    sign_in(page, address, NEW_PASSWORD)
    page.wait_for_url("**/connections")


def test_sign_out_everywhere_else_ends_the_other_sessions(page, mesh_up):
    address = sign_up_in_browser(page)
    with second_session(mesh_up, address) as other:
        open_account(page)
        sessions = page.get_by_role("region", name="Sessions")
        expect(sessions.get_by_role("row")).to_have_count(3)  # the heading row and two sessions
        expect(sessions.get_by_role("row").filter(has_text="This session")).to_have_count(1)
        expect(sessions).to_contain_text("second-device/1.0")
        check_page(page, "account-sessions")
        sessions.get_by_role("button", name="Sign out everywhere else").click()
        expect(sessions.get_by_role("status")).to_contain_text("Signed out of 1 other session.")
        expect(sessions.get_by_role("row")).to_have_count(2)
        assert other.get("/v1/me").status_code == 401
    page.reload()
    page.get_by_role("heading", name="Sessions").wait_for()  # this one goes on


def test_a_consent_toggled_on_the_account_page_stays_so(page):
    sign_up_in_browser(page)
    open_account(page)
    consents = page.get_by_role("region", name="Consents")
    box = consents.get_by_label("New features")
    expect(box).not_to_be_checked()
    expect(consents).to_contain_text("An occasional e-mail about what is new")
    expect(consents.get_by_label("Notifications about your connections")).to_be_checked()
    box.check()
    expect(consents.get_by_role("status")).to_contain_text("Saved")
    page.reload()
    expect(page.get_by_role("region", name="Consents").get_by_label("New features")).to_be_checked()


def test_a_plan_upgrade_refuses_a_card_number_at_its_field(page):
    sign_up_in_browser(page)
    open_account(page)
    plan = page.get_by_role("region", name="Plan")
    plan.get_by_label("Plan", exact=True).select_option("pro")
    plan.get_by_label("Billing name").fill("Ada Lovelace")
    plan.get_by_label("Address line 1").fill("4111 1111 1111 1111")
    plan.get_by_label("Postal code").fill("SW1Y 4JH")
    plan.get_by_label("City").fill("London")
    plan.get_by_label("Country").fill("GB")
    plan.get_by_label("Payment reference").fill("pay_12345")
    plan.get_by_role("button", name="Change plan").click()
    expect(field_error(page, "Address line 1")).to_contain_text("card data is never accepted")
    check_page(page, "account-plan-error")
    plan.get_by_label("Address line 1").fill("12 St James Sq")
    plan.get_by_role("button", name="Change plan").click()
    expect(plan.get_by_role("status")).to_contain_text("Your plan is now Pro.")
    overview = page.get_by_role("region", name="Your account")
    expect(overview).to_contain_text("Pro")
    expect(overview).to_contain_text("Ada Lovelace")


def test_download_my_data_saves_the_export(page, tmp_path: Path):
    address = sign_up_in_browser(page)
    open_account(page)
    with page.expect_download() as arrived:
        page.get_by_role("link", name="Download my data").click()
    download = arrived.value
    assert re.fullmatch(r"leadmesh-export(-\d{4}-\d{2}-\d{2})?\.json", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    document = json.loads(saved.read_text())
    assert document["complete"] is True
    assert address in json.dumps(document["services"]["identity"])


def test_deleting_the_account_asks_for_the_password_and_signs_out(page, api, inbox):
    address = sign_up_in_browser(page)
    open_account(page)
    deletion = page.get_by_role("region", name="Delete account")
    deletion.get_by_label("Password", exact=True).fill("not my password at all")
    deletion.get_by_role("button", name="Delete my account").click()
    dialog = page.get_by_role("dialog", name="Delete your account?")
    check_page(page, "account-delete-dialog")
    dialog.get_by_role("button", name="Yes, delete my account").click()
    expect(field_error(deletion, "Password")).to_contain_text("wrong")
    deletion.get_by_label("Password", exact=True).fill(PASSWORD)
    deletion.get_by_role("button", name="Delete my account").click()
    dialog.get_by_role("button", name="Yes, delete my account").click()
    page.wait_for_url("**/sign-in?deleted=1")
    expect(page.get_by_role("status")).to_contain_text("Your account is closed")
    inbox.wait_for(address, "will be deleted")
    signed = api.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert signed.status_code == 403 and signed.json()["code"] == "ACCOUNT_DISABLED"


# --- when the session ends under the person's feet -------------------------------------------


def test_an_ended_session_goes_to_sign_in_and_back_to_the_page(page, mesh_up):
    address = sign_up_in_browser(page)
    with second_session(mesh_up, address) as other:
        assert other.delete("/v1/me/sessions/others").json()["revoked_count"] == 1
    page.get_by_role("link", name="Account").click()
    page.wait_for_url(re.compile(r".*/sign-in\?next=%2Faccount&expired=1$"))
    expect(page.get_by_role("status")).to_contain_text("Your session has ended")
    check_page(page, "sign-in-expired")
    sign_in(page, address)
    page.wait_for_url("**/account")
    page.get_by_role("heading", name="Sessions").wait_for()


def test_a_csrf_token_that_does_not_match_goes_to_sign_in(page, browser_context, mesh_up):
    address = sign_up_in_browser(page)
    open_account(page)
    # Every signed-in answer sets the cookies afresh: overwrite once the page's reads are done.
    expect(page.get_by_role("region", name="Consents").get_by_label("New features")).to_be_visible()
    page.wait_for_load_state("networkidle")
    browser_context.add_cookies(
        [{"name": "lm_csrf", "value": "forged", "url": mesh_up.base_url, "secure": True}]
    )
    assert "lm_csrf=forged" in page.evaluate("document.cookie")
    page.get_by_role("region", name="Consents").get_by_label("New features").click()
    page.wait_for_url(re.compile(r".*/sign-in\?next=%2Faccount&expired=1$"))
    expect(page.get_by_role("status")).to_contain_text("Your session has ended")
    # Signing in again mends the cookies; the refused change was not made.
    sign_in(page, address)
    page.wait_for_url("**/account")
    expect(
        page.get_by_role("region", name="Consents").get_by_label("New features")
    ).not_to_be_checked()
