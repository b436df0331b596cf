"""Connections through the gateway, as a signed-in person meets them: made, listed, changed,
deleted; their webhook URLs; manual runs delivered to a real HTTPS receiver, with the run's
attempts, the activity stream and notifications; refused input; one user's things are another's
404, and nothing without a session."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    FAILURE_MAIL_WINDOW_SECONDS,
    PAUSE_AFTER_FAILURES,
    Inbox,
    Mesh,
    SharedReceiver,
    action,
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


@pytest.fixture
def anonymous(mesh_up: Mesh) -> httpx.Client:
    with mesh_up.client() as client:
        yield client


def test_a_webhook_connection_is_made_with_a_url_that_delivers(
    alice: httpx.Client, anonymous: httpx.Client, mesh_up: Mesh, receiver: SharedReceiver
):
    path = receiver.path("webhook")
    created = alice.post(
        "/v1/connections",
        json={
            "name": "  Leads to CRM  ",
            "trigger": {"type": "webhook"},
            "action": action(
                receiver.https_url(path),
                headers={"X-Lead-Source": "{{ body.source }}"},
                body_template={
                    "email": "{{ body.lead.email }}",
                    "score": "{{ body.lead.score }}",
                    "greeting": "Hello {{ body.lead.name }}!",
                    "fixed": [1, True, None],
                },
            ),
            "max_attempts": 3,
        },
    )
    assert created.status_code == 201, created.text
    connection = created.json()
    assert created.headers["location"] == f"/v1/connections/{connection['id']}"
    assert connection["name"] == "Leads to CRM" and connection["status"] == "active"
    assert connection["trigger"] == {"type": "webhook", "cron": None, "every_seconds": None}
    assert connection["max_attempts"] == 3 and connection["has_signing_secret"] is False
    assert connection["consecutive_failures"] == 0 and connection["pause_reason"] is None
    url = connection["webhook_url"]
    assert url.startswith(f"{mesh_up.base_url}/hooks/")
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 32 and connection["webhook_token_hint"] == token[:6]

    lead = {"email": "ada@example.com", "score": 42, "name": "Ada"}
    hooked = anonymous.post(url, json={"source": "form", "lead": lead})
    assert hooked.status_code == 202, hooked.text
    run_id = hooked.json()["run_id"]
    [request] = receiver.wait_to(path)
    assert request.scheme == "https" and request.method == "POST"
    assert request.json() == {
        "email": "ada@example.com",
        "score": 42,
        "greeting": "Hello Ada!",
        "fixed": [1, True, None],
    }
    assert request.headers["x-lead-source"] == "form"
    assert request.headers["idempotency-key"] == run_id
    assert finished(alice, run_id)["status"] == "succeeded"

    # The token is shown once: reading the connection again gives its hint only.
    fetched = alice.get(f"/v1/connections/{connection['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["webhook_url"] is None
    assert token not in fetched.text
    changing = ("webhook_url", "last_run")
    shown = {k: v for k, v in fetched.json().items() if k not in changing}
    assert shown == {k: v for k, v in connection.items() if k not in changing}
    assert connection["last_run"] is None
    assert fetched.json()["last_run"]["id"] == run_id
    assert fetched.json()["last_run"]["status"] == "succeeded"


def test_connections_are_listed_newest_first_page_by_page(alice: httpx.Client):
    made = [create(alice, action=action(f"https://example.com/{n}")) for n in range(5)]
    newest_first = [c["id"] for c in reversed(made)]
    everything = alice.get("/v1/connections")
    assert [c["id"] for c in everything.json()["items"]] == newest_first
    assert everything.json()["next_page_token"] is None

    seen, token, pages = [], None, 0
    while True:
        params = {"page_size": 2, **({"page_token": token} if token else {})}
        page = alice.get("/v1/connections", params=params)
        assert page.status_code == 200, page.text
        assert len(page.json()["items"]) <= 2
        seen += [c["id"] for c in page.json()["items"]]
        pages += 1
        token = page.json()["next_page_token"]
        if token is None:
            break
    assert seen == newest_first and pages == 3

    for bad in ("not-a-token", "A" * 300, "%00"):
        refused = alice.get("/v1/connections", params={"page_token": bad})
        assert refused.status_code in (400, 422), refused.text
    assert alice.get("/v1/connections", params={"page_size": 0}).status_code == 422
    assert alice.get("/v1/connections", params={"page_size": 101}).status_code == 422


def test_page_tokens_no_service_issued_are_422_invalid_page_token_on_every_list(
    alice: httpx.Client,
):
    # "wrI" is "²" and "YmVmb3JlOsKy" "before:²": digits to str.isdigit, not to int (500s once).
    lists = ("/v1/connections", "/v1/activity", "/v1/webhook-log", "/v1/notifications",
             "/v1/me/login-history", "/v1/credentials")  # fmt: skip
    for path in lists:
        for token in ("wrI", "YmVmb3JlOsKy", "MTLCsg", "ü"):
            refused = alice.get(path, params={"page_token": token})
            assert refused.status_code == 422, (path, token, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "INVALID_PAGE_TOKEN", (path, token)


def test_a_connection_is_changed_field_by_field(
    alice: httpx.Client, anonymous: httpx.Client, receiver: SharedReceiver
):
    first, second = receiver.path("patch-a"), receiver.path("patch-b")
    connection = create(
        alice, trigger={"type": "webhook"}, action=action(receiver.https_url(first))
    )
    path, url = f"/v1/connections/{connection['id']}", connection["webhook_url"]

    renamed = alice.patch(path, json={"name": "Renamed"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Renamed" and renamed.json()["status"] == "active"
    assert renamed.json()["action"]["url"] == receiver.https_url(first)

    paused = alice.patch(path, json={"status": "paused"})
    assert paused.json()["status"] == "paused" and paused.json()["pause_reason"] is None
    refused = anonymous.post(url, json={"n": 1})
    assert refused.status_code == 409 and refused.json()["code"] == "CONNECTION_PAUSED"
    manual = alice.post(f"{path}/runs", json={"payload": {}})
    assert manual.status_code == 409 and manual.json()["code"] == "CONNECTION_PAUSED"
    assert alice.patch(path, json={"status": "active"}).json()["status"] == "active"

    changed = alice.patch(
        path,
        json={
            "action": action(
                receiver.http_url(second), method="PUT", body_template={"n": "{{ body.n }}"}
            ),
            "max_attempts": 7,
        },
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["action"]["method"] == "PUT" and changed.json()["max_attempts"] == 7
    assert changed.json()["action"]["body_template"] == {"n": "{{ body.n }}"}
    assert changed.json()["name"] == "Renamed"
    run_id = anonymous.post(url, json={"n": 2}).json()["run_id"]
    [request] = receiver.wait_to(second)
    assert request.scheme == "http" and request.method == "PUT" and request.json() == {"n": 2}
    assert finished(alice, run_id)["status"] == "succeeded"
    assert receiver.to(first) == []

    secret = "whsec_" + uuid.uuid4().hex
    signed = alice.patch(path, json={"signing_secret": secret})
    assert signed.json()["has_signing_secret"] is True and secret not in signed.text
    unsigned_refused = anonymous.post(url, json={"n": 3})
    assert unsigned_refused.status_code == 401
    assert unsigned_refused.json()["code"] == "SIGNATURE_INVALID"
    removed = alice.patch(path, json={"signing_secret": None})
    assert removed.json()["has_signing_secret"] is False
    assert anonymous.post(url, json={"n": 4}).status_code == 202

    scheduled = alice.patch(path, json={"trigger": {"type": "schedule", "cron": "*/5 * * * *"}})
    assert scheduled.status_code == 200, scheduled.text
    assert scheduled.json()["trigger"]["cron"] == "*/5 * * * *"
    assert scheduled.json()["webhook_token_hint"] is None
    assert anonymous.post(url, json={"n": 5}).status_code == 404

    for bad in ({"status": "deleted"}, {"name": ""}, {"max_attempts": 0}, {"bogus": 1}):
        assert alice.patch(path, json=bad).status_code == 422, bad


def test_a_deleted_connection_is_gone_with_its_webhook(
    alice: httpx.Client, anonymous: httpx.Client
):
    connection = create(
        alice, trigger={"type": "webhook"}, action=action("https://example.com/hook")
    )
    path = f"/v1/connections/{connection['id']}"
    deleted = alice.delete(path)
    assert deleted.status_code == 204 and deleted.content == b""
    for response in (
        alice.get(path),
        alice.patch(path, json={"name": "x"}),
        alice.delete(path),
        alice.post(f"{path}/rotate-token"),
        alice.post(f"{path}/runs", json={"payload": None}),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["code"] == "CONNECTION_NOT_FOUND"
    assert anonymous.post(connection["webhook_url"], json={}).status_code == 404
    assert connection["id"] not in alice.get("/v1/connections").text


def test_rotating_the_token_retires_the_old_url(
    alice: httpx.Client, anonymous: httpx.Client, receiver: SharedReceiver
):
    target = receiver.path("rotate")
    connection = create(
        alice, trigger={"type": "webhook"}, action=action(receiver.https_url(target))
    )
    old_url = connection["webhook_url"]
    rotated = alice.post(f"/v1/connections/{connection['id']}/rotate-token")
    assert rotated.status_code == 200, rotated.text
    new_url = rotated.json()["webhook_url"]
    assert (
        new_url != old_url and new_url.rsplit("/", 1)[1][:6] == rotated.json()["webhook_token_hint"]
    )
    gone = anonymous.post(old_url, json={"old": True})
    assert gone.status_code == 404 and gone.json()["code"] == "WEBHOOK_NOT_FOUND"
    accepted = anonymous.post(new_url, json={"new": True})
    assert accepted.status_code == 202
    assert finished(alice, accepted.json()["run_id"])["status"] == "succeeded"
    assert len(receiver.wait_to(target)) == 1

    manual = create(alice, action=action("https://example.com/x"))
    refused = alice.post(f"/v1/connections/{manual['id']}/rotate-token")
    assert refused.status_code == 409 and refused.json()["code"] == "NOT_A_WEBHOOK"


def test_a_manual_run_is_delivered_with_its_credential_and_recorded_redacted(
    alice: httpx.Client, receiver: SharedReceiver
):
    key = f"sk_e2e_run_{uuid.uuid4().hex}"
    credential = alice.post(
        "/v1/credentials",
        json={
            "name": "CRM key",
            "kind": "api_key",
            "provider": "crm",
            "secret": {"key": key, "header": "X-Api-Key"},
        },
    )
    assert credential.status_code == 201, credential.text
    target = receiver.path("manual")
    receiver.answer(target, 200, {"ok": True}, delay=1.0)  # long enough to be seen running
    connection = create(
        alice,
        action=action(
            receiver.https_url(target),
            body_template={"who": "{{ body.name }}", "items": "{{ body.items }}"},
            credential_id=credential.json()["id"],
        ),
    )
    payload = {"name": "Grace", "items": [1, 2.5, {"deep": ["x"]}]}
    run_id = start_run(alice, connection["id"], payload)
    run = finished(alice, run_id)
    assert run["seen"] in (["queued", "running", "succeeded"], ["running", "succeeded"])
    [request] = receiver.to(target)
    assert request.json() == {"who": "Grace", "items": [1, 2.5, {"deep": ["x"]}]}
    assert request.headers["x-api-key"] == key
    assert request.headers["content-type"] == "application/json"
    assert run["status"] == "succeeded" and run["run_id"] == run_id
    assert run["connection_id"] == connection["id"] and run["trigger"] == "manual"
    assert run["attempt_count"] == 1 and run["error"] is None
    assert run["finish_time"] >= run["create_time"]
    [attempt] = run["attempts"]
    assert attempt["number"] == 1 and attempt["response_status"] == 200
    assert attempt["response_body"] == '{"ok": true}' and attempt["error"] is None
    sent = attempt["request"]
    assert sent["method"] == "POST" and sent["url"] == receiver.https_url(target)
    assert sent["headers"]["X-Api-Key"] == "[redacted]"
    assert sent["headers"]["Idempotency-Key"] == run_id
    assert json.loads(sent["body"]) == request.json() and sent["body"] == request.text()
    assert run["event"]["body"] == payload
    assert key not in alice.get(f"/v1/runs/{run_id}").text

    # A GET sends no body; a null payload is fine.
    get_target = receiver.path("manual-get")
    plain = create(alice, action=action(receiver.https_url(get_target), method="GET"))
    assert finished(alice, start_run(alice, plain["id"]))["status"] == "succeeded"
    [fetched] = receiver.wait_to(get_target)
    assert fetched.method == "GET" and fetched.body == b""


def test_the_activity_stream_lists_runs_by_connection(
    alice: httpx.Client, receiver: SharedReceiver
):
    one = create(alice, action=action(receiver.https_url(receiver.path("activity-1"))))
    two = create(alice, action=action(receiver.https_url(receiver.path("activity-2"))))
    runs = [start_run(alice, c["id"], {"n": n}) for n, c in enumerate((one, two, one))]
    for run_id in runs:
        finished(alice, run_id)

    everything = alice.get("/v1/activity").json()["items"]
    assert [r["run_id"] for r in everything[:3]] == list(reversed(runs))
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in everything[:3])
    only_one = alice.get("/v1/activity", params={"connection_id": one["id"]}).json()["items"]
    assert [r["run_id"] for r in only_one] == [runs[2], runs[0]]
    assert {r["connection_id"] for r in only_one} == {one["id"]}
    first_page = alice.get("/v1/activity", params={"page_size": 1, "connection_id": one["id"]})
    token = first_page.json()["next_page_token"]
    assert [r["run_id"] for r in first_page.json()["items"]] == [runs[2]] and token
    second_page = alice.get(
        "/v1/activity", params={"page_size": 1, "connection_id": one["id"], "page_token": token}
    )
    assert [r["run_id"] for r in second_page.json()["items"]] == [runs[0]]
    assert second_page.json()["next_page_token"] is None
    unknown = alice.get("/v1/activity", params={"connection_id": str(uuid.uuid4())})
    assert unknown.status_code == 200 and unknown.json()["items"] == []


def _refused(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/connections", json={"name": "bad", **body})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def test_bad_connections_are_422_naming_the_field_and_position(alice: httpx.Client):
    manual = {"type": "manual"}
    problem = _refused(
        alice,
        {
            "trigger": manual,
            "action": action("https://example.com", body_template={"x": "a {{ body.( }}"}),
        },
    )
    assert problem["code"] == "INVALID_TEMPLATE"
    [error] = problem["errors"]
    assert error["field"] == "action.body_template.x" and "position" in error["message"]

    nested = _refused(
        alice,
        {
            "trigger": manual,
            "action": action("https://example.com", body_template={"a": [{"b": "{{ unclosed"}]}),
        },
    )
    assert nested["code"] == "INVALID_TEMPLATE"
    assert nested["errors"][0]["field"].startswith("action.body_template.a")
    header = _refused(
        alice,
        {"trigger": manual, "action": action("https://example.com", headers={"X-A": "{{ [ }}"})},
    )
    assert header["code"] == "INVALID_TEMPLATE"
    assert header["errors"][0]["field"] == "action.headers.X-A"
    # 600 nested parentheses once overflowed the JMESPath parser's stack: a 500.
    deep = "{{ " + "(" * 600 + "body" + ")" * 600 + " }}"
    problem = _refused(
        alice, {"trigger": manual, "action": action("https://example.com", body_template=deep)}
    )
    assert problem["code"] == "INVALID_TEMPLATE"
    assert problem["errors"][0]["field"] == "action.body_template"
    assert "nested deeper than 64 levels" in problem["errors"][0]["message"]

    for cron in ("not a cron", "* * *", "61 * * * *"):
        problem = _refused(
            alice,
            {"trigger": {"type": "schedule", "cron": cron}, "action": action("https://e.com")},
        )
        assert problem["code"] == "INVALID_TRIGGER", cron
        assert problem["errors"][0]["field"] == "trigger.cron"
    both = _refused(
        alice,
        {
            "trigger": {"type": "schedule", "cron": "* * * * *", "every_seconds": 3600},
            "action": action("https://e.com"),
        },
    )
    assert both["code"] == "INVALID_TRIGGER"
    too_often = _refused(
        alice,
        {"trigger": {"type": "schedule", "every_seconds": 1}, "action": action("https://e.com")},
    )
    assert too_often["errors"][0]["field"] == "trigger.every_seconds"

    for url in (
        "https://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.1]/",
        "https://192.168.1.1/",
        "ftp://example.com/",
        "https://user:password@example.com/",
    ):
        problem = _refused(alice, {"trigger": manual, "action": action(url)})
        assert problem["errors"][0]["field"] == "action.url", (url, problem)
        assert "password" not in str(problem)

    plain = action("https://e.com")
    for body, field in (
        ({"trigger": {"type": "email"}, "action": plain}, "trigger.type"),
        ({"trigger": manual, "action": {"type": "ftp", "url": "https://e.com"}}, "action.type"),
        ({"trigger": manual, "action": action("https://e.com", method="TRACE")}, "action.method"),
        ({"trigger": manual, "action": plain, "max_attempts": 21}, "max_attempts"),
        ({"trigger": manual, "action": plain, "signing_secret": "short"}, "signing_secret"),
    ):
        problem = _refused(alice, body)
        assert problem["errors"][0]["field"] == field, (body, problem)


def _nested(depth: int, leaf: Any = "{{ body }}") -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "value",
    ["NaN", "Infinity", "-Infinity", "1e400", "9" * 400, "12345678901234567891",
     '"\\ud800"', '{"\\udfff": 1}', json.dumps(_nested(33)), "[" * 5000 + "]" * 5000],
    ids=["nan", "infinity", "-infinity", "overflow", "huge-int", "beyond-2^53", "surrogate",
         "surrogate-key", "deep", "very-deep"],
)  # fmt: skip
def test_json_values_protobuf_cannot_carry_are_refused(alice: httpx.Client, value: str):
    """Payloads and body templates travel as google.protobuf.Value: what it cannot carry
    exactly is a 4xx naming the field, never a 500 or a silently changed number."""
    connection = create(alice, action=action("https://example.com"))
    for path, text, field in (
        (f"/v1/connections/{connection['id']}/runs", f'{{"payload": {value}}}', "payload"),
        (
            "/v1/connections",
            '{"name": "x", "trigger": {"type": "manual"}, "action": {"url": "https://e.com", '
            f'"body_template": {value}}}}}',
            "action.body_template",
        ),
        (
            f"/v1/connections/{connection['id']}",
            f'{{"action": {{"url": "https://e.com", "body_template": {value}}}}}',
            "action.body_template",
        ),
    ):
        method = "PATCH" if path.endswith(connection["id"]) else "POST"
        headers = {"Content-Type": "application/json"}
        refused = alice.request(method, path, content=text.encode(), headers=headers)
        if refused.status_code == 400:  # nested beyond what the JSON parser takes at all
            assert refused.json()["status"] == 400
            continue
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["errors"][0]["field"] == field
    assert alice.get(f"/v1/connections/{connection['id']}").status_code == 200


def test_odd_but_valid_values_go_through_unchanged(alice: httpx.Client, receiver: SharedReceiver):
    target = receiver.path("odd")
    template = {
        "deep": _nested(31, "x"),  # 32 levels with the template's own
        "max": 2**53,
        "tiny": 5e-324,
        "text": "{{ body.t }}",
        "unicode": "\u00e9\u4e2d\U0001f600",
        "empty": {},
        "list": [],
        "neg": -0.5,
    }
    connection = create(alice, action=action(receiver.https_url(target), body_template=template))
    assert alice.get(f"/v1/connections/{connection['id']}").json()["action"]["body_template"] == (
        template
    )
    run = finished(alice, start_run(alice, connection["id"], {"t": _nested(20)}))
    assert run["status"] == "succeeded" and run["event"]["body"] == {"t": _nested(20)}
    [request] = receiver.wait_to(target)
    assert request.json() == {**template, "text": _nested(20)}
    for url in ("https://xn--/", "https://xn--a.com/", "https://[::1/", "https://e.com:99999/"):
        refused = alice.post(
            "/v1/connections",
            json={"name": "x", "trigger": {"type": "manual"}, "action": action(url)},
        )
        assert refused.status_code == 422, (url, refused.text)
        assert refused.json()["errors"][0]["field"] == "action.url"


def test_a_credential_of_another_user_cannot_be_used(mesh_up: Mesh):
    with mesh_up.client() as alice, mesh_up.client() as bob:
        register_and_login(alice)
        register_and_login(bob)
        theirs = bob.post(
            "/v1/credentials",
            json={
                "name": "Bob's",
                "kind": "login",
                "provider": "crm",
                "secret": {"username": "bob", "password": "bob-secret-password"},
            },
        ).json()["id"]
        body = {
            "trigger": {"type": "manual"},
            "action": action("https://example.com", credential_id=theirs),
        }
        problem = _refused(alice, body)
        assert problem["code"] == "CREDENTIAL_NOT_FOUND"
        assert problem["errors"][0]["field"] == "action.credential_id"
        assert _refused(alice, {**body, "action": action("https://e.com", credential_id="nope")})[
            "code"
        ] == ("CREDENTIAL_NOT_FOUND")
        mine = create(alice, action=action("https://example.com"))
        changed = alice.patch(
            f"/v1/connections/{mine['id']}",
            json={"action": action("https://example.com", credential_id=theirs)},
        )
        assert changed.status_code == 422 and changed.json()["code"] == "CREDENTIAL_NOT_FOUND"


def test_failed_runs_notify_and_pause_the_connection(alice: httpx.Client, receiver: SharedReceiver):
    target = receiver.path("failing")
    receiver.answer(target, 500, {"error": "down"})
    connection = create(alice, action=action(receiver.https_url(target)), max_attempts=2)
    path = f"/v1/connections/{connection['id']}"

    run = finished(alice, start_run(alice, connection["id"], {"n": 0}))
    assert run["status"] == "failed" and run["attempt_count"] == 2
    assert "HTTP 500" in run["error"]
    assert [a["response_status"] for a in run["attempts"]] == [500, 500]
    assert [a["number"] for a in run["attempts"]] == [1, 2]
    assert run["attempts"][0]["response_body"] == '{"error": "down"}'
    assert len(receiver.to(target)) == 2

    notices = alice.get("/v1/notifications").json()["items"]
    [failed] = [n for n in notices if n["run_id"] == run["run_id"]]
    assert failed["kind"] == "run_failed" and failed["connection_id"] == connection["id"]
    assert failed["read"] is False and failed["read_time"] is None
    read = alice.post(f"/v1/notifications/{failed['id']}/read")
    assert read.status_code == 200, read.text
    assert read.json()["read"] is True and read.json()["read_time"] is not None
    again = alice.get("/v1/notifications", params={"connection_id": connection["id"]})
    assert [n["read"] for n in again.json()["items"] if n["id"] == failed["id"]] == [True]
    assert alice.get(f"{path}").json()["consecutive_failures"] == 1

    for n in range(1, PAUSE_AFTER_FAILURES):
        assert finished(alice, start_run(alice, connection["id"], {"n": n}))["status"] == "failed"
    paused = alice.get(path).json()
    assert paused["status"] == "paused" and paused["pause_reason"]
    assert paused["consecutive_failures"] == PAUSE_AFTER_FAILURES
    kinds = [
        n["kind"]
        for n in alice.get("/v1/notifications", params={"connection_id": connection["id"]}).json()[
            "items"
        ]
    ]
    assert kinds[0] == "connection_paused"
    assert kinds.count("run_failed") == PAUSE_AFTER_FAILURES
    refused = alice.post(f"{path}/runs", json={"payload": 1})
    assert refused.status_code == 409 and refused.json()["code"] == "CONNECTION_PAUSED"

    # Fixed and activated again: the count starts over and runs go out.
    receiver.answer(target, 200, {"ok": True})
    active = alice.patch(path, json={"status": "active"}).json()
    assert active["status"] == "active" and active["consecutive_failures"] == 0
    assert active["pause_reason"] is None
    assert finished(alice, start_run(alice, connection["id"], {"n": 9}))["status"] == "succeeded"

    unknown = alice.post(f"/v1/notifications/{uuid.uuid4()}/read")
    assert unknown.status_code == 404 and unknown.json()["code"] == "NOTIFICATION_NOT_FOUND"


def test_egress_addresses_are_public(anonymous: httpx.Client):
    answer = anonymous.get("/v1/egress-ips")
    assert answer.status_code == 200
    assert set(answer.json()) == {"addresses"} and isinstance(answer.json()["addresses"], list)


def test_user_b_gets_404_for_everything_of_user_a(mesh_up: Mesh, receiver: SharedReceiver):
    target = receiver.path("isolation")
    receiver.answer(target, 500)
    with mesh_up.client() as alice, mesh_up.client() as bob:
        register_and_login(alice)
        register_and_login(bob)
        connection = create(
            alice,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(target)),
            max_attempts=1,
        )
        run = finished(alice, start_run(alice, connection["id"], {"secret": "alice's"}))
        [notice] = alice.get(
            "/v1/notifications", params={"connection_id": connection["id"]}
        ).json()["items"]
        hooked = bob.post(connection["webhook_url"], json={"via": "webhook"})  # anyone may call it
        assert hooked.status_code == 202
        finished(alice, hooked.json()["run_id"])
        for listing in ("/v1/connections", "/v1/activity", "/v1/webhook-log", "/v1/notifications"):
            assert alice.get(listing).json()["items"], listing
        path = f"/v1/connections/{connection['id']}"
        for response, code in (
            (bob.get(path), "CONNECTION_NOT_FOUND"),
            (bob.patch(path, json={"name": "mine"}), "CONNECTION_NOT_FOUND"),
            (bob.patch(path, json={"status": "paused"}), "CONNECTION_NOT_FOUND"),
            (bob.delete(path), "CONNECTION_NOT_FOUND"),
            (bob.post(f"{path}/rotate-token"), "CONNECTION_NOT_FOUND"),
            (bob.post(f"{path}/runs", json={"payload": 1}), "CONNECTION_NOT_FOUND"),
            (bob.get(f"/v1/runs/{run['run_id']}"), "RUN_NOT_FOUND"),
            (bob.post(f"/v1/notifications/{notice['id']}/read"), "NOTIFICATION_NOT_FOUND"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["code"] == code
        for listing in ("/v1/connections", "/v1/activity", "/v1/webhook-log", "/v1/notifications"):
            assert bob.get(listing).json()["items"] == [], listing
            filtered = bob.get(listing, params={"connection_id": connection["id"]})
            assert filtered.status_code == 200 and filtered.json()["items"] == [], listing
        # Nothing of Alice's changed.
        mine = alice.get(path).json()
        assert mine["name"] == connection["name"] and mine["status"] == "active"
        assert alice.get(f"/v1/notifications/{notice['id']}/read").status_code == 405
        notices = alice.get("/v1/notifications").json()["items"]
        assert [n["read"] for n in notices if n["id"] == notice["id"]] == [False]


def test_everything_needs_a_session_but_egress_and_hooks(anonymous: httpx.Client):
    some = str(uuid.uuid4())
    for method, path, body in (
        ("GET", "/v1/connections", None),
        ("POST", "/v1/connections", {"name": "x"}),
        ("GET", f"/v1/connections/{some}", None),
        ("PATCH", f"/v1/connections/{some}", {"name": "x"}),
        ("DELETE", f"/v1/connections/{some}", None),
        ("POST", f"/v1/connections/{some}/rotate-token", None),
        ("POST", f"/v1/connections/{some}/runs", {"payload": 1}),
        ("GET", f"/v1/runs/{some}", None),
        ("GET", "/v1/activity", None),
        ("GET", "/v1/webhook-log", None),
        ("GET", "/v1/notifications", None),
        ("POST", f"/v1/notifications/{some}/read", None),
    ):
        response = anonymous.request(method, path, json=body)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["code"] == "SESSION_REQUIRED"


def test_runs_go_through_postgres_and_the_redis_queue(mesh_scaled: Mesh, receiver: SharedReceiver):
    """The scale-out stores: the runner's database on PostgreSQL, its queue a Redis Stream."""
    good, bad = receiver.path("scaled-ok"), receiver.path("scaled-fail")
    receiver.answer(bad, 503)
    with mesh_scaled.client() as owner, mesh_scaled.client() as caller:
        register_and_login(owner)
        hooked = create(
            owner,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(good), body_template={"n": "{{ body.n }}"}),
        )
        failing = create(owner, action=action(receiver.https_url(bad)), max_attempts=2)
        accepted = [caller.post(hooked["webhook_url"], json={"n": n}) for n in range(5)]
        assert [a.status_code for a in accepted] == [202] * 5
        failed = finished(owner, start_run(owner, failing["id"], {"x": "\u00e9\u4e2d"}))
        for answer in accepted:
            assert finished(owner, answer.json()["run_id"])["status"] == "succeeded"
        assert sorted(r.json()["n"] for r in receiver.wait_to(good, 5)) == list(range(5))
        assert failed["status"] == "failed" and failed["attempt_count"] == 2
        assert len(receiver.to(bad)) == 2
        notices = owner.get("/v1/notifications").json()["items"]
        assert [n["kind"] for n in notices] == ["run_failed"]
        page = owner.get("/v1/activity", params={"page_size": 4})
        rest = owner.get(
            "/v1/activity", params={"page_size": 4, "page_token": page.json()["next_page_token"]}
        )
        assert len(page.json()["items"]) == 4 and len(rest.json()["items"]) == 2
        log = owner.get("/v1/webhook-log", params={"connection_id": hooked["id"]}).json()
        assert len(log["items"]) == 5
        nul = owner.post(
            "/v1/connections",
            json={
                "name": "a\u0000b",
                "trigger": {"type": "manual"},
                "action": action("https://e.com"),
            },
        )
        assert nul.status_code == 422, nul.text
        nul_run = owner.post(f"/v1/connections/{hooked['id']}/runs", json={"payload": "\u0000"})
        assert nul_run.status_code in (202, 422), nul_run.text
        nul_hook = caller.post(hooked["webhook_url"], content=b'{"n": "\\u0000"}',
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert nul_hook.status_code in (202, 422), nul_hook.text


def test_failures_are_mailed_to_owners_who_consent(
    mesh_up: Mesh, receiver: SharedReceiver, inbox: Inbox
):
    target = receiver.path("mailed")
    receiver.answer(target, 500, {"error": "down"})
    with mesh_up.client() as owner, mesh_up.client() as quiet:
        address = register_and_login(owner)  # execution notifications: granted at sign-up
        silent = register_and_login(quiet)
        withdrawn = quiet.put(
            "/v1/me/consents",
            json={"items": [{"purpose": "execution_notifications", "granted": False}]},
        )
        assert withdrawn.status_code == 200, withdrawn.text
        for client in (owner, quiet):
            made = create(client, action=action(receiver.https_url(target)), max_attempts=1)
            assert finished(client, start_run(client, made["id"], {"n": 1}))["status"] == "failed"
        mail = inbox.wait_for(address, "failed")
        assert "HTTP 500" in mail.get_content() and mail["List-Unsubscribe"]
        # The runner never holds the address: identity looked it up and checked the consent.
        time.sleep(1.0)
        assert not [m for m in inbox.messages if silent in str(m["To"])]


def test_failure_mails_about_one_connection_are_gathered(
    mesh_up: Mesh, receiver: SharedReceiver, inbox: Inbox
):
    """Three runs failing within a second: one mail at once, the other two in one mail saying
    how many once the connection's window ends; in the app, one notification per run."""
    target = receiver.path("gathered")
    receiver.answer(target, 500, {"error": "down"})
    with mesh_up.client() as owner:
        address = register_and_login(owner)
        made = create(owner, action=action(receiver.https_url(target)), max_attempts=1)
        runs = [start_run(owner, made["id"], {"n": n}) for n in range(PAUSE_AFTER_FAILURES)]
        for run_id in runs:
            assert finished(owner, run_id)["status"] == "failed"

        def failure_mails() -> list:
            return [
                m for m in inbox.messages
                if address in str(m["To"]) and "failed" in str(m["Subject"])
            ]  # fmt: skip

        first = inbox.wait_for(address, "failed")
        assert "HTTP 500" in first.get_content()
        time.sleep(1.0)
        assert len(failure_mails()) == 1  # not one per run
        gathered = inbox.wait_for(
            address, f"{len(runs) - 1} runs", timeout=FAILURE_MAIL_WINDOW_SECONDS + 10
        )
        assert f"{len(runs) - 1} runs of this connection failed" in gathered.get_content()
        assert "HTTP 500" in gathered.get_content() and made["id"] in gathered.get_content()
        time.sleep(1.0)
        assert len(failure_mails()) == 2
        # The pause is its own mail, sent at once.
        assert inbox.wait_for(address, "paused")
        notices = owner.get("/v1/notifications", params={"connection_id": made["id"]}).json()
        failed = [n["run_id"] for n in notices["items"] if n["kind"] == "run_failed"]
        assert sorted(failed) == sorted(runs)
