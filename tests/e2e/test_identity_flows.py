"""A new user's journey through `leadmesh up`, over HTTPS, as the issue lists it."""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie

import httpx

from tests.e2e.conftest import PASSWORD, Mesh, announced, new_email, register_and_login


def _set_cookies(response: httpx.Response) -> dict[str, dict[str, str]]:
    """Every Set-Cookie header of a response, parsed: {name: {attribute: value}}."""
    cookies: dict[str, dict[str, str]] = {}
    for header in response.headers.get_list("set-cookie"):
        parsed = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            attributes = {k: str(v) for k, v in morsel.items() if v}
            flags = header.lower()
            attributes["httponly"] = "httponly" in flags
            attributes["secure"] = "secure" in flags
            cookies[name] = {"value": morsel.value, **attributes}
    return cookies


def test_register_login_me_logout(api: httpx.Client, mesh_up: Mesh):
    address = new_email()
    created = api.post("/v1/accounts", json={"email": address, "password": PASSWORD})
    assert created.status_code == 201
    assert created.json()["email"] == address
    assert created.json()["plan"] == "free"
    assert "password" not in created.text

    signed = api.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert signed.status_code == 200
    cookies = _set_cookies(signed)
    session = cookies["lm_session"]
    assert session["httponly"] and session["secure"]
    assert session["samesite"].lower() == "lax" and session["path"] == "/"
    assert 0 < int(session["max-age"]) <= 7 * 86400
    csrf = cookies["lm_csrf"]
    assert not csrf["httponly"] and csrf["secure"]
    assert signed.json()["csrf_token"] == csrf["value"]
    assert session["value"] not in signed.text  # the token lives in the HttpOnly cookie only

    me = api.get("/v1/me")
    assert me.status_code == 200 and me.json()["email"] == address
    renewed = _set_cookies(me)["lm_session"]  # the session rolls: its cookie is renewed
    assert int(renewed["max-age"]) > 7 * 86400 - 60

    out = api.delete("/v1/sessions/current", headers={"X-CSRF-Token": csrf["value"]})
    assert out.status_code == 204
    assert int(_set_cookies(out)["lm_session"]["max-age"]) == 0
    # The server ended the session: replaying the old cookie does not get back in.
    with mesh_up.client(cookies={"lm_session": session["value"]}) as stale:
        replay = stale.get("/v1/me")
    assert replay.status_code == 401
    assert replay.headers["content-type"] == "application/problem+json"
    assert replay.json()["code"] == "SESSION_INVALID"


def test_remember_email_cookie(api: httpx.Client):
    address = new_email()
    api.post("/v1/accounts", json={"email": address, "password": PASSWORD})
    body = {"email": address, "password": PASSWORD, "remember_email": True}
    remembered = _set_cookies(api.post("/v1/sessions", json=body))["lm_email"]
    assert int(remembered["max-age"]) == 365 * 86400
    assert remembered["secure"]
    api.headers["X-CSRF-Token"] = api.cookies["lm_csrf"]
    body["remember_email"] = False
    forgotten = _set_cookies(api.post("/v1/sessions", json=body))["lm_email"]
    assert int(forgotten["max-age"]) == 0


def test_state_changes_need_the_csrf_token(api: httpx.Client):
    register_and_login(api)
    token = api.headers.pop("X-CSRF-Token")
    change = {"items": [{"purpose": "new_features", "granted": True}]}
    refused = api.put("/v1/me/consents", json=change)
    assert refused.status_code == 403
    assert refused.json()["code"] == "CSRF_TOKEN_INVALID"
    wrong = api.put("/v1/me/consents", json=change, headers={"X-CSRF-Token": token[:-2] + "xx"})
    assert wrong.status_code == 403
    allowed = api.put("/v1/me/consents", json=change, headers={"X-CSRF-Token": token})
    assert allowed.status_code == 200
    granted = {c["purpose"]: c["granted"] for c in allowed.json()["items"]}
    assert granted["new_features"] is True
    # Reading needs no token.
    assert api.get("/v1/me/consents").status_code == 200


def test_lockout_and_its_end(api: httpx.Client, mesh_up: Mesh):
    address = new_email("locked")
    api.post("/v1/accounts", json={"email": address, "password": PASSWORD})
    for _ in range(10):
        wrong = api.post("/v1/sessions", json={"email": address, "password": "not the password"})
        assert wrong.status_code == 401
        assert wrong.json()["code"] == "INVALID_CREDENTIALS"
    held = api.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert held.status_code == 429
    assert held.json()["code"] == "LOGIN_THROTTLED"
    retry_after = int(held.headers["Retry-After"])
    assert 1 <= retry_after <= 6
    # The rule holds one account at one address: the owner elsewhere still gets in.
    with mesh_up.client(headers={"X-Forwarded-For": "198.51.100.23"}) as elsewhere:
        owner = elsewhere.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert owner.status_code == 200, owner.text
    time.sleep(retry_after + 0.5)
    released = api.post("/v1/sessions", json={"email": address, "password": PASSWORD})
    assert released.status_code == 200, released.text
    api.headers["X-CSRF-Token"] = api.cookies["lm_csrf"]
    history = api.get("/v1/me/login-history").json()["items"]
    outcomes = [a["outcome"] for a in history]
    assert outcomes[0] == "success"
    assert outcomes.count("bad_password") == 10 and "throttled" in outcomes
    assert "198.51.100.23" in {a["ip_address"] for a in history}


def test_unknown_email_and_wrong_password_answer_alike(api: httpx.Client):
    address = new_email()
    api.post("/v1/accounts", json={"email": address, "password": PASSWORD})
    wrong = api.post("/v1/sessions", json={"email": address, "password": "not the password"})
    unknown = api.post("/v1/sessions", json={"email": new_email(), "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_password_reset_through_smtp(api: httpx.Client, mesh_up: Mesh, inbox):
    address = register_and_login(api)
    assert api.post("/v1/password-resets", json={"email": address}).status_code == 202
    # An unknown address answers exactly the same.
    unknown = api.post("/v1/password-resets", json={"email": new_email()})
    assert unknown.status_code == 202 and unknown.json() == {"status": "accepted"}

    mail = inbox.wait_for(address)
    token = re.search(r"token=([A-Za-z0-9_\-]+)", mail.get_body(("plain",)).get_content())[1]
    new_password = "a brand new passphrase 7"
    with mesh_up.client() as anonymous:
        body = {"token": token, "new_password": new_password}
        assert anonymous.post("/v1/password-resets/confirm", json=body).status_code == 204
        reused = anonymous.post("/v1/password-resets/confirm", json=body)
        assert reused.status_code == 422 or reused.status_code == 400
        assert reused.json()["code"] == "RESET_TOKEN_INVALID"
    # Every session ended; the new password works, the old one does not.
    assert api.get("/v1/me").status_code == 401
    with mesh_up.client() as fresh:
        old = fresh.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert old.status_code == 401
        new = fresh.post("/v1/sessions", json={"email": address, "password": new_password})
        assert new.status_code == 200


def test_password_change_ends_other_sessions(api: httpx.Client, mesh_up: Mesh):
    address = register_and_login(api)
    with mesh_up.client() as other:
        other.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert other.get("/v1/me").status_code == 200
        listed = api.get("/v1/me/sessions").json()["items"]
        assert len(listed) == 2 and sum(s["current"] for s in listed) == 1
        change = {"current_password": PASSWORD, "new_password": "another fine passphrase"}
        changed = api.put("/v1/me/password", json=change)
        assert changed.status_code == 200, changed.text
        api.headers["X-CSRF-Token"] = changed.json()["csrf_token"]
        assert other.get("/v1/me").status_code == 401
        assert api.get("/v1/me").status_code == 200


def test_the_session_just_opened_is_the_current_one(api: httpx.Client, mesh_up: Mesh):
    address = register_and_login(api)
    with mesh_up.client() as fresh:
        signed = fresh.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        assert signed.json()["session"]["current"] is True
        listed = fresh.get("/v1/me/sessions").json()["items"]
        (current,) = [s for s in listed if s["current"]]
        assert current["id"] == signed.json()["session"]["id"]
        fresh.headers["X-CSRF-Token"] = fresh.cookies["lm_csrf"]
        change = {"current_password": PASSWORD, "new_password": "yet another passphrase"}
        changed = fresh.put("/v1/me/password", json=change)
        assert changed.status_code == 200 and changed.json()["session"]["current"] is True


def test_a_wrong_current_password_names_the_field(api: httpx.Client):
    register_and_login(api)
    change = {"current_password": "not the password at all", "new_password": "a new passphrase"}
    wrong = api.put("/v1/me/password", json=change)
    assert wrong.status_code == 401 and wrong.json()["code"] == "INVALID_CREDENTIALS"
    assert [e["field"] for e in wrong.json()["errors"]] == ["current_password"]


def test_end_other_sessions(api: httpx.Client, mesh_up: Mesh):
    address = register_and_login(api)
    with mesh_up.client() as other:
        other.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        ended = api.delete("/v1/me/sessions/others")
        assert ended.status_code == 200 and ended.json() == {"revoked_count": 1}
        assert other.get("/v1/me").status_code == 401
        assert api.get("/v1/me").status_code == 200


def test_password_rules_say_which_failed(api: httpx.Client):
    address = new_email()
    for password, code in (
        ("Tiny7!", "PASSWORD_TOO_SHORT"),
        ("x" * 1025, "PASSWORD_TOO_LONG"),
        ("password123", "PASSWORD_TOO_COMMON"),
        (f"my {address} pw", "PASSWORD_CONTAINS_EMAIL"),
    ):
        refused = api.post("/v1/accounts", json={"email": address, "password": password})
        assert refused.status_code == 422, (password, refused.text)
        assert refused.json()["code"] == code
        assert password not in refused.text


def test_paid_plan_and_card_data_refused(api: httpx.Client):
    register_and_login(api)
    address = {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    card = {
        "plan": "pro",
        "billing_name": "Ada Lovelace",
        "billing_address": address,
        "payment_reference": "4111 1111 1111 1111",
    }
    refused = api.put("/v1/me/plan", json=card)
    assert refused.status_code == 422 and refused.json()["code"] == "CARD_DATA_REFUSED"
    assert "4111" not in refused.text
    unknown = api.put("/v1/me/plan", json={**card, "plan": "platinum", "payment_reference": "x"})
    assert unknown.json()["code"] == "UNKNOWN_PLAN"
    upgraded = api.put("/v1/me/plan", json={**card, "payment_reference": "pi_3Nabc123"})
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["plan"] == "pro"
    assert upgraded.json()["billing_address"]["city"] == "Berlin"


def test_deletion_request_ends_every_session(api: httpx.Client, mesh_up: Mesh):
    address = register_and_login(api)
    with mesh_up.client() as other:
        other.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        wrong = api.request("DELETE", "/v1/me", json={"password": "not it at all"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "INVALID_CREDENTIALS"
        deleted = api.request("DELETE", "/v1/me", json={"password": PASSWORD})
        assert deleted.status_code == 202, deleted.text
        assert deleted.json()["erase_deadline"] > deleted.json()["request_time"]
        assert api.get("/v1/me").status_code == 401
        assert other.get("/v1/me").status_code == 401
    with mesh_up.client() as again:
        refused = again.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        assert refused.status_code in (401, 403)


def test_bad_input_is_a_problem_not_a_crash(api: httpx.Client):
    too_big = api.post(
        "/v1/accounts",
        content=b"{" + b" " * (1024 * 1024 + 1) + b"}",
        headers={"content-type": "application/json"},
    )
    assert too_big.status_code == 413 and too_big.json()["code"] == "BODY_TOO_LARGE"

    def chunks():
        for _ in range(17):
            yield b" " * 65536

    chunked = api.post(
        "/v1/accounts", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    malformed = api.post(
        "/v1/accounts", content=b'{"email": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and malformed.json()["code"] == "MALFORMED_JSON"
    wrong = api.post("/v1/accounts", json={"email": "a@b.c", "password": "x" * 20, "admin": True})
    assert wrong.status_code == 422
    assert wrong.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in wrong.json()["errors"]} == {"admin"}
    assert api.get("/v1/nothing-here").json()["code"] == "NOT_FOUND"


def test_marketing_mail_unsubscribes_in_one_click(api: httpx.Client, mesh_up: Mesh, inbox):
    register_and_login(api)
    mail = announced(api, mesh_up, inbox)
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.fullmatch(r"<(https://[^>]+)>", str(mail["List-Unsubscribe"]))[1]
    # On the wire as RFC 2369 wants it (mail clients do not decode RFC 2047 words here).
    assert f"\nList-Unsubscribe: <{link}>\r\n".encode() in mail.raw
    # (The body's link is the web page that asks first: test_api_for_web.py.)
    with mesh_up.client() as mail_client:  # no session: the link works without signing in
        one_click = mail_client.post(
            link,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert one_click.status_code == 200, one_click.text
        assert one_click.json()["purpose"] == "new_features"
        assert mail_client.get(link).status_code == 200  # idempotent, by GET too
    consents = {c["purpose"]: c for c in api.get("/v1/me/consents").json()["items"]}
    assert consents["new_features"]["granted"] is False
    assert [e["source"] for e in consents["new_features"]["history"]][-1] == "unsubscribe"
    assert consents["execution_notifications"]["granted"] is True
    forged = api.get("/v1/unsubscribe", params={"token": link.rsplit("=", 1)[1][:-3] + "abc"})
    assert forged.status_code in (400, 404, 422)
    assert forged.json()["code"] == "UNSUBSCRIBE_TOKEN_INVALID"
