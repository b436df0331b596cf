"""What the web app needs of the API, as a signed-in person's client meets it: a connection's
request previewed (rendered by the runner, credentials redacted, template errors with their line
and column), a finished run retried with the same event, the activity stream filtered by status
and time with page tokens, unread notifications counted and listed, each connection's last run,
and the marketing mail's unsubscribe link pointing at the page that asks first."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    Mesh,
    SharedReceiver,
    action,
    announced,
    create,
    finished,
    register_and_login,
    start_run,
)


@pytest.fixture
def alice(mesh_up: Mesh) -> httpx.Client:
    with mesh_up.client() as client:
        register_and_login(client)
        yield client


@pytest.fixture(scope="module")
def mesh_up(purging_mesh: Mesh) -> Mesh:
    """This file's own mesh: a test purges as of eight days on."""
    return purging_mesh


def _preview(client: httpx.Client, the_action: dict[str, Any], event: Any = None):
    body: dict[str, Any] = {"action": the_action}
    if event is not None:
        body["event"] = event
    return client.post("/v1/connections/preview", json=body)


def _credential(client: httpx.Client, kind: str, secret: dict[str, Any]) -> str:
    made = client.post(
        "/v1/credentials", json={"name": kind, "kind": kind, "provider": "crm", "secret": secret}
    )
    assert made.status_code == 201, made.text
    return made.json()["id"]


# --- POST /v1/connections/preview ---


def test_the_preview_is_the_request_a_delivery_sends_and_sends_nothing(
    alice: httpx.Client, receiver: SharedReceiver
):
    path = receiver.path("preview")
    template = {
        "email": "{{ body.lead.email }}",
        "score": "{{ body.lead.score }}",
        "greeting": "Hello {{ body.lead.name }}!",
        "campaign": "{{ query.campaign }}",
    }
    the_action = action(
        receiver.https_url(path) + "?list=7",
        headers={"X-Lead-Source": '{{ headers."x-source" }}'},
        body_template=template,
    )
    event = {
        "body": {"lead": {"email": "ada@example.com", "score": 42, "name": "Ada"}},
        "headers": {"x-source": "landing"},
        "query": {"campaign": "spring"},
    }
    shown = _preview(alice, the_action, event)
    assert shown.status_code == 200, shown.text
    assert shown.json()["credential"] is None
    request = shown.json()["request"]
    assert request["method"] == "POST"
    assert request["url"] == receiver.https_url(path) + "?list=7"
    assert request["headers"]["X-Lead-Source"] == "landing"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["Idempotency-Key"] == "[the run's id]"
    sent = {"email": "ada@example.com", "score": 42, "greeting": "Hello Ada!", "campaign": "spring"}
    compact = json.dumps(json.loads(request["body"]), separators=(",", ":"))
    assert json.loads(request["body"]) == sent and request["body"] == compact  # as on the wire
    # A GET sends no body; an event left out is a manual run's (headers, query empty).
    get = _preview(alice, {**the_action, "method": "GET"})
    assert get.status_code == 200, get.text
    assert get.json()["request"]["body"] is None
    assert get.json()["request"]["headers"]["X-Lead-Source"] == ""
    time.sleep(0.5)
    assert receiver.to(path) == []  # nothing went out


def test_the_preview_redacts_credentials_without_resolving_them(
    alice: httpx.Client, receiver: SharedReceiver
):
    url = receiver.https_url(receiver.path("preview-credential"))
    login = _credential(alice, "login", {"username": "crm-user", "password": "crm-pass-9071"})
    shown = _preview(alice, action(url, credential_id=login, body_template={"a": 1}))
    assert shown.status_code == 200, shown.text
    assert shown.json()["request"]["headers"]["Authorization"] == "[redacted]"
    assert shown.json()["credential"] == {"id": login, "kind": "login"}
    api_key = _credential(alice, "api_key", {"key": "key-secret-5523", "header": "X-Key"})
    keyed = _preview(alice, action(url, credential_id=api_key))
    assert keyed.status_code == 200, keyed.text
    assert keyed.json()["credential"] == {"id": api_key, "kind": "api_key"}
    for answer in (shown, keyed):
        assert "crm-pass-9071" not in answer.text and "key-secret-5523" not in answer.text
        assert "crm-user" not in answer.text
    unknown = _preview(alice, action(url, credential_id=str(uuid.uuid4())))
    assert unknown.status_code == 422 and unknown.json()["code"] == "CREDENTIAL_NOT_FOUND"
    assert unknown.json()["errors"][0]["field"] == "action.credential_id"


def _refused(client: httpx.Client, the_action: dict[str, Any], event: Any = None):
    answer = _preview(client, the_action, event)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    return answer.json()


def test_a_template_error_names_the_field_and_its_line_and_column(alice: httpx.Client):
    url = "https://example.com/leads"
    problem = _refused(alice, action(url, body_template="{{ body.( }}"))
    assert problem["code"] == "INVALID_TEMPLATE"
    [error] = problem["errors"]
    assert error["field"] == "action.body_template"
    assert re.search(r"at line 1, column \d+$", error["message"]), error
    multiline = _refused(alice, action(url, body_template={"note": "Hi\nthere {{ unclosed"}))
    [error] = multiline["errors"]
    assert error["field"] == "action.body_template"
    assert error["message"].startswith("note: ")
    assert error["message"].endswith("at line 2, column 7"), error


def test_other_invalid_actions_and_events_name_their_fields(alice: httpx.Client):
    url = "https://example.com/leads"
    cases = [
        (action("ftp://example.com"), None, "INVALID_URL", "action.url"),
        (action(url, method="TRACE"), None, "INVALID_REQUEST", "action.method"),
        (action(url, headers={"X-A": "{{ [ }}"}), None, "INVALID_TEMPLATE", "action.headers.X-A"),
        (action(url), {"lead": 1}, "INVALID_EVENT", "event.lead"),
        (action(url), {"headers": []}, "INVALID_EVENT", "event.headers"),
        (
            action(url, body_template="{{ join(',', body) }}"),
            {"body": 5},
            "RENDER_FAILED",
            "action.body_template",
        ),
    ]
    for the_action, event, code, field in cases:
        problem = _refused(alice, the_action, event)
        assert (problem["code"], problem["errors"][0]["field"]) == (code, field), problem


def test_the_preview_needs_a_session_and_the_csrf_echo(
    mesh_up: Mesh, alice: httpx.Client, api: httpx.Client
):
    body = {"action": action("https://example.com/leads")}
    assert api.post("/v1/connections/preview", json=body).status_code == 401
    with mesh_up.client() as forgetful:
        forgetful.cookies.update(alice.cookies)
        refused = forgetful.post("/v1/connections/preview", json=body)
        assert refused.status_code == 403 and refused.json()["code"] == "CSRF_TOKEN_INVALID"


# --- POST /v1/runs/{id}/retry ---


def test_a_failed_run_is_retried_with_the_same_event(alice: httpx.Client, receiver: SharedReceiver):
    path = receiver.path("retry")
    receiver.answer(path, 500)
    connection = create(
        alice, action=action(receiver.https_url(path), body_template="{{ body }}"), max_attempts=1
    )
    first = finished(alice, start_run(alice, connection["id"], {"email": "bo@example.com"}))
    assert first["status"] == "failed"
    receiver.answer(path, 200, {"ok": True})
    retried = alice.post(f"/v1/runs/{first['run_id']}/retry")
    assert retried.status_code == 202, retried.text
    assert set(retried.json()) == {"run_id"} and retried.json()["run_id"] != first["run_id"]
    second = finished(alice, retried.json()["run_id"])
    assert second["status"] == "succeeded"
    assert second["connection_id"] == connection["id"] and second["trigger"] == "manual"
    assert second["event"] == first["event"]
    assert [r.json() for r in receiver.wait_to(path, 2)] == [{"email": "bo@example.com"}] * 2
    assert alice.get(f"/v1/runs/{first['run_id']}").json()["status"] == "failed"  # kept


def test_a_run_still_going_or_anothers_or_unknown_is_not_retried(
    mesh_up: Mesh, alice: httpx.Client, receiver: SharedReceiver
):
    path = receiver.path("slow")
    receiver.answer(path, 200, {"ok": True}, delay=3)
    connection = create(alice, action=action(receiver.https_url(path)))
    run_id = start_run(alice, connection["id"], {"n": 1})
    busy = alice.post(f"/v1/runs/{run_id}/retry")
    assert busy.status_code == 409, busy.text
    assert busy.json()["code"] == "RUN_NOT_FINISHED"
    assert alice.post(f"/v1/runs/{uuid.uuid4()}/retry").json()["code"] == "RUN_NOT_FOUND"
    with mesh_up.client() as bob:
        register_and_login(bob)
        theirs = bob.post(f"/v1/runs/{run_id}/retry")
        assert theirs.status_code == 404 and theirs.json()["code"] == "RUN_NOT_FOUND"
    finished(alice, run_id)


# --- GET /v1/activity filters ---


def _ids(client: httpx.Client, **params: Any) -> list[str]:
    """Every run id the filters give, page after page of two."""
    found, token = [], None
    while True:
        query = {**params, "page_size": 2, **({"page_token": token} if token else {})}
        page = client.get("/v1/activity", params=query)
        assert page.status_code == 200, page.text
        found += [r["run_id"] for r in page.json()["items"]]
        token = page.json()["next_page_token"]
        if token is None:
            return found


def test_the_activity_stream_filters_by_status_and_time_across_pages(
    alice: httpx.Client, receiver: SharedReceiver
):
    good, bad = receiver.path("ok"), receiver.path("down")
    receiver.answer(bad, 500)
    ok = create(alice, action=action(receiver.https_url(good)))
    failing = create(alice, action=action(receiver.https_url(bad)), max_attempts=1)
    before = datetime.now(UTC) - timedelta(seconds=1)
    succeeded = [finished(alice, start_run(alice, ok["id"], n))["run_id"] for n in range(3)]
    failed = [finished(alice, start_run(alice, failing["id"], n))["run_id"] for n in range(3)]
    newest_first = list(reversed(succeeded + failed))

    assert _ids(alice, status="succeeded") == list(reversed(succeeded))
    assert _ids(alice, status="failed", connection_id=failing["id"]) == list(reversed(failed))
    assert _ids(alice, status="failed", connection_id=ok["id"]) == []
    assert _ids(alice, since=before.isoformat()) == newest_first
    assert _ids(alice, until=before.isoformat()) == []
    middle = alice.get(f"/v1/runs/{failed[0]}").json()["create_time"]
    assert _ids(alice, since=middle) == list(reversed(failed))
    assert _ids(alice, until=middle) == list(reversed(succeeded))
    naive = before.replace(tzinfo=None).isoformat()  # no offset: UTC
    assert _ids(alice, since=naive, status="succeeded") == list(reversed(succeeded))

    for params, field in (
        ({"status": "exploded"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45T00:00:00Z"}, "until"),
    ):
        refused = alice.get("/v1/activity", params=params)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == field


# --- notifications: unread ---


def test_unread_notifications_are_counted_and_listed_alone(
    alice: httpx.Client, receiver: SharedReceiver
):
    def count() -> int:
        answer = alice.get("/v1/notifications/unread-count")
        assert answer.status_code == 200, answer.text
        assert set(answer.json()) == {"unread_count"}
        return answer.json()["unread_count"]

    assert count() == 0
    path = receiver.path("notify")
    receiver.answer(path, 500)
    connection = create(alice, action=action(receiver.https_url(path)), max_attempts=1)
    runs = [finished(alice, start_run(alice, connection["id"], n))["run_id"] for n in range(2)]
    assert count() == 2
    unread = alice.get("/v1/notifications", params={"unread": "true"}).json()["items"]
    assert sorted(n["run_id"] for n in unread) == sorted(runs)
    assert alice.post(f"/v1/notifications/{unread[0]['id']}/read").status_code == 200
    assert count() == 1
    left = alice.get("/v1/notifications", params={"unread": "true"}).json()["items"]
    assert [n["id"] for n in left] == [unread[1]["id"]]
    every = alice.get("/v1/notifications").json()["items"]
    assert len(every) == 2


# --- last_run on connections ---


def test_connections_carry_their_last_run(alice: httpx.Client, receiver: SharedReceiver):
    path = receiver.path("last")
    quiet = create(alice, action=action(receiver.https_url(path)))
    busy = create(alice, trigger={"type": "webhook"}, action=action(receiver.https_url(path)))
    finished(alice, start_run(alice, busy["id"], 1))
    last = finished(alice, start_run(alice, busy["id"], 2))
    listed = {c["id"]: c for c in alice.get("/v1/connections").json()["items"]}
    assert listed[quiet["id"]]["last_run"] is None
    shown = listed[busy["id"]]["last_run"]
    assert shown["id"] == last["run_id"] and shown["status"] == "succeeded"
    assert shown["create_time"] == last["create_time"]
    assert shown["finish_time"] == last["finish_time"]
    one = alice.get(f"/v1/connections/{busy['id']}").json()
    assert one["last_run"] == shown
    # Every answer that carries the connection carries its last run: a change, a new URL.
    paused = alice.patch(f"/v1/connections/{busy['id']}", json={"status": "paused"})
    assert paused.status_code == 200 and paused.json()["last_run"] == shown
    rotated = alice.post(f"/v1/connections/{busy['id']}/rotate-token")
    assert rotated.status_code == 200 and rotated.json()["last_run"] == shown


# --- the OpenAPI document ---


def test_the_openapi_document_describes_the_new_endpoints(api: httpx.Client):
    paths = api.get("/openapi.json").json()["paths"]
    preview = paths["/v1/connections/preview"]["post"]["responses"]
    assert "INVALID_TEMPLATE" in preview["422"]["description"]
    assert {"200", "401", "403", "422"} <= set(preview)
    retry = paths["/v1/runs/{run_id}/retry"]["post"]["responses"]
    assert "RUN_DETAILS_PURGED" in retry["409"]["description"]
    assert "RUN_NOT_FINISHED" in retry["409"]["description"]
    assert "RUN_NOT_FOUND" in retry["404"]["description"] and "202" in retry
    parameters = {p["name"] for p in paths["/v1/activity"]["get"]["parameters"]}
    assert {"connection_id", "status", "since", "until", "page_token"} <= parameters
    assert "/v1/notifications/unread-count" in paths
    notices = {p["name"] for p in paths["/v1/notifications"]["get"]["parameters"]}
    assert "unread" in notices
    assert "/v1/terms" in paths and "/v1/oauth/providers" in paths


def test_the_terms_are_public_and_the_defaults_the_privacy_policy_states(api: httpx.Client):
    terms = api.get("/v1/terms")
    assert terms.status_code == 200, terms.text
    assert terms.json() == {
        "plans": [
            {"name": "free", "amount": 0, "currency": "EUR"},
            {"name": "pro", "amount": 2900, "currency": "EUR"},
            {"name": "business", "amount": 9900, "currency": "EUR"},
        ],
        "deletion_grace_days": 14,
        "erase_after_days": 60,
    }


# --- the marketing mail's unsubscribe link ---


def test_the_mails_body_links_the_page_that_asks_and_the_header_the_one_click_api(
    alice: httpx.Client, mesh_up: Mesh, inbox
):
    mail = announced(alice, mesh_up, inbox)
    one_click = re.fullmatch(r"<(https://[^>]+)>", str(mail["List-Unsubscribe"]))[1]
    assert one_click.startswith(f"{mesh_up.base_url}/v1/unsubscribe?token=")
    token = one_click.rsplit("=", 1)[1]
    text = mail.get_body(("plain",)).get_content()
    assert f"{mesh_up.base_url}/unsubscribe?token={token}" in text
    assert "/v1/unsubscribe" not in text
    with mesh_up.client() as browser:  # the page's address is the web app's
        opened = browser.get(f"/unsubscribe?token={token}")
        assert opened.status_code == 200 and "text/html" in opened.headers["content-type"]
    consents = {c["purpose"]: c["granted"] for c in alice.get("/v1/me/consents").json()["items"]}
    assert consents["new_features"] is True  # opening the page changed nothing


# Last in this file: the purge of the runner's categories as of 8 days from now purges the
# execution details of every run of this process's mesh.
def test_a_run_whose_details_were_purged_is_not_retried(
    mesh_up: Mesh, alice: httpx.Client, receiver: SharedReceiver
):
    path = receiver.path("purged")
    receiver.answer(path, 500)
    connection = create(alice, action=action(receiver.https_url(path)), max_attempts=1)
    run_id = finished(alice, start_run(alice, connection["id"], {"n": 1}))["run_id"]
    # The runner's categories only: identity's would end the session (idle for 7 days by then).
    purged = mesh_up.leadmesh("retention", "run", "--participant", "runner", "--as-of", "+8d")
    assert purged.returncode == 0, purged.stderr
    assert alice.get(f"/v1/runs/{run_id}").json()["details_purged"] is True
    refused = alice.post(f"/v1/runs/{run_id}/retry")
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "RUN_DETAILS_PURGED"
    assert "retention" in refused.json()["detail"]
