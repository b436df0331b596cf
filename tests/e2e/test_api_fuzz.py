"""Schemathesis against the running gateway's /openapi.json: every operation, anonymous and signed
in; no 5xx, and every status, content type, header and body as the document declares."""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import PASSWORD, Mesh, finished, new_email, register_and_login

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Each generated request comes from its own documentation-range address, so the fuzzer's failed
# logins never throttle the other tests' loopback address.
_addresses = (f"203.0.113.{n % 250 + 1}" for n in itertools.count())


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def fuzzed(request: pytest.FixtureRequest) -> Mesh:
    """The embedded default, and the scale-out stores (PostgreSQL refuses what SQLite takes)."""
    return request.getfixturevalue("mesh_up" if request.param == "sqlite" else "mesh_scaled")


@pytest.fixture(scope="module")
def api_schema(fuzzed: Mesh):
    with fuzzed.client() as client:
        document = client.get("/openapi.json").json()
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="module")
def signed_in(fuzzed: Mesh) -> dict[str, str]:
    with fuzzed.client() as client:
        address = new_email("fuzz")
        client.post("/v1/accounts", json={"email": address, "password": PASSWORD})
        client.post("/v1/sessions", json={"email": address, "password": PASSWORD})
        return {"lm_session": client.cookies["lm_session"], "lm_csrf": client.cookies["lm_csrf"]}


def _requests_session(mesh: Mesh):
    import requests

    session = requests.Session()
    session.verify = str(mesh.tls_cert)
    return session


# Ends the session every signed-in case shares (the flow tests cover them).
_SESSION_ENDING = {("DELETE", "/v1/sessions/current"), ("DELETE", "/v1/me/sessions/others")}


def _fuzz(schema, mesh: Mesh, cookies: dict[str, str] | None) -> list[str]:
    """Runs hypothesis over every operation (schemathesis's pytest plugin does the same, but its
    fixture loader does not support pytest 9); returns the operations that were fuzzed."""
    session, fuzzed = _requests_session(mesh), []
    headers = {"X-CSRF-Token": cookies["lm_csrf"]} if cookies else {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if cookies and (operation.method.upper(), operation.path) in _SESSION_ENDING:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            response = case.call(
                base_url=mesh.base_url,
                session=session,
                verify=str(mesh.tls_cert),
                cookies=cookies,
                headers={**headers, "X-Forwarded-For": next(_addresses)},
            )
            case.validate_response(response, checks=CHECKS)

        run()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    return fuzzed


def test_anonymous_requests_conform(api_schema, fuzzed: Mesh):
    operations = _fuzz(api_schema, fuzzed, None)
    assert "POST /v1/accounts" in operations and "GET /v1/me" in operations
    assert "POST /hooks/{token}" in operations and "GET /v1/egress-ips" in operations


def test_signed_in_requests_conform(api_schema, fuzzed: Mesh, signed_in: dict[str, str]):
    operations = _fuzz(api_schema, fuzzed, signed_in)
    assert "PUT /v1/me/plan" in operations and "POST /v1/credentials" in operations
    runner = {
        "POST /v1/connections",
        "PATCH /v1/connections/{connection_id}",
        "POST /v1/connections/{connection_id}/runs",
        "GET /v1/runs/{run_id}",
        "GET /v1/webhook-log",
        "POST /v1/notifications/{notification_id}/read",
    }
    assert runner <= set(operations)
    vault = {
        "GET /v1/credentials",
        "GET /v1/credentials/{credential_id}",
        "PATCH /v1/credentials/{credential_id}",
        "DELETE /v1/credentials/{credential_id}",
        "GET /v1/oauth/{provider}/start",
        "GET /v1/oauth/{provider}/callback",
    }
    assert vault <= set(operations)


def test_the_fuzzed_session_still_works(fuzzed: Mesh, signed_in: dict[str, str]):
    """A guard on the fuzzing itself: the signed-in cases really ran signed in."""
    with fuzzed.client(cookies=signed_in) as client:
        assert client.get("/v1/me").status_code == 200


def test_schema_declares_problem_json_for_errors(api_schema):
    document = api_schema.raw_schema
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    media = set(response.get("content", {}))
                    assert media <= {"application/problem+json"} or path == "/readyz", (
                        method,
                        path,
                        code,
                    )


# --- the runner's free-form inputs, which the document can only call "any JSON value" ---

_TEXT = st.text(
    st.characters(exclude_categories=("Cs",))
    | st.sampled_from(["\x00", "\ud800", "\udfff", "{", "}"]),
    max_size=12,
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**1100), max_value=2**1100)
    | st.floats()  # NaN and infinities too: sent as JSON's NaN/Infinity extensions
    | _TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=25,
)


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


_VALUES = _JSON | st.integers(min_value=25, max_value=40).map(_deep)
_FAST = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
_OK_OR_REFUSED = {200, 201, 202, 204, 400, 413, 422, 429}


def _query(params: dict[str, str]) -> str:
    """A query string of any text, lone surrogates too (as their UTF-8-like bytes, escaped):
    httpx would send bytes values as their repr, b'…'."""
    return urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in params.items()})


def _raw_json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _all_finished(client: httpx.Client, run_ids: list[str]) -> None:
    """Every accepted run is delivered: what was accepted can also be rendered and sent."""
    for run_id in run_ids:
        run = finished(client, run_id, timeout=60)
        assert run["status"] == "succeeded", run


def test_manual_run_payloads_and_body_templates_never_fail(fuzzed: Mesh, receiver):
    target = receiver.path("fuzz-run")
    accepted: list[str] = []
    with fuzzed.client() as client:
        register_and_login(client)
        created = client.post(
            "/v1/connections",
            json={
                "name": "fuzz",
                "trigger": {"type": "manual"},
                "action": {"url": receiver.https_url(target), "body_template": "{{ body }}"},
            },
        )
        connection = created.json()["id"]
        json_type = {"Content-Type": "application/json"}

        @given(value=_VALUES)
        @_FAST
        def run(value: Any) -> None:
            payload = b'{"payload": ' + _raw_json(value) + b"}"
            started = client.post(
                f"/v1/connections/{connection}/runs", content=payload, headers=json_type
            )
            assert started.status_code in _OK_OR_REFUSED, started.text
            if started.status_code == 202:
                accepted.append(started.json()["run_id"])
                detail = client.get(f"/v1/runs/{started.json()['run_id']}")
                assert detail.status_code == 200, detail.text
            template = (
                b'{"name": "t", "trigger": {"type": "manual"}, "action": '
                b'{"url": "https://example.com", "body_template": ' + _raw_json(value) + b"}}"
            )
            made = client.post("/v1/connections", content=template, headers=json_type)
            assert made.status_code in _OK_OR_REFUSED, made.text
            if made.status_code == 201:
                path = f"/v1/connections/{made.json()['id']}"
                assert client.get(path).status_code == 200
                changed = client.patch(
                    path,
                    content=b'{"action": {"url": "https://example.com", "body_template": '
                    + _raw_json(value)
                    + b"}}",
                    headers=json_type,
                )
                assert changed.status_code == 200, changed.text
                assert client.get("/v1/connections", params={"page_size": 100}).is_success
                assert client.delete(path).status_code == 204

        run()
        assert accepted, "no payload was accepted: nothing was delivered"
        _all_finished(client, accepted)
        assert client.get("/v1/activity", params={"page_size": 100}).status_code == 200


_HEADER_NAME = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
_HEADER_VALUE = st.from_regex(r"\A([\x21-\x7e]([\x20-\x7e]{0,38}[\x21-\x7e])?)?\Z")
_MEDIA = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain",
     "application/octet-stream", "application/vnd.api+json", "multipart/form-data", "", "x/y"]
)  # fmt: skip
_BODY = (
    st.binary(max_size=300)
    | _JSON.map(_raw_json)
    | st.integers(min_value=25, max_value=40).map(lambda d: _raw_json(_deep(d)))
    | st.dictionaries(_TEXT, _TEXT, max_size=4).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode("utf-8", "surrogatepass")
    )
)


def test_webhooks_take_any_body_headers_and_query(fuzzed: Mesh, receiver):
    target = receiver.path("fuzz-hook")
    accepted: list[str] = []
    with fuzzed.client() as owner, fuzzed.client() as caller:
        register_and_login(owner)
        # Several connections, so that the rate limit (per connection) rarely answers.
        urls = itertools.cycle(
            [
                owner.post(
                    "/v1/connections",
                    json={
                        "name": f"fuzz hook {n}",
                        "trigger": {"type": "webhook"},
                        "action": {
                            "url": receiver.https_url(target),
                            "body_template": {"b": "{{ body }}", "q": "{{ query }}"},
                        },
                    },
                ).json()["webhook_url"]
                for n in range(6)
            ]
        )

        @given(
            body=_BODY,
            media=_MEDIA,
            headers=st.dictionaries(_HEADER_NAME, _HEADER_VALUE, max_size=4),
            query=st.dictionaries(_HEADER_NAME, _TEXT, max_size=3),
        )
        @_FAST
        def run(body: bytes, media: str, headers: dict[str, str], query: dict[str, str]) -> None:
            sent = {**headers, "Content-Type": media} if media else headers
            answer = caller.post(f"{next(urls)}?{_query(query)}", content=body, headers=sent)
            assert answer.status_code in _OK_OR_REFUSED, answer.text
            if answer.status_code == 202:
                accepted.append(answer.json()["run_id"])
                assert owner.get(f"/v1/runs/{answer.json()['run_id']}").status_code == 200

        run()
        assert accepted, "no webhook was accepted"
        _all_finished(owner, accepted)
        log = owner.get("/v1/webhook-log", params={"page_size": 100})
        assert log.status_code == 200 and len(log.json()["items"]) == min(len(accepted), 100)


def test_oauth_with_the_configured_provider_never_fails(fuzzed: Mesh, oauth_provider):
    """The schema's fuzzer names providers at random, so none exists: here the flow runs against
    the configured one, with a live state (or a fuzzed one), and fuzzed names, codes and errors."""
    outcomes: set[str] = set()
    with fuzzed.client() as client:
        register_and_login(client)

        @given(name=_TEXT, state=st.none() | _TEXT, code=_TEXT, error=_TEXT)
        @_FAST
        def run(name: str, state: str | None, code: str, error: str) -> None:
            started = client.get(f"/v1/oauth/crm/start?{_query({'name': name})}")
            assert started.status_code in {302, 422}, started.text
            if started.status_code == 302:
                location = started.headers["location"]
                assert location.startswith(oauth_provider.authorize_url)
                if state is None:  # the live one
                    state = parse_qs(urlsplit(location).query)["state"][0]
            params = {"state": state or "", "code": code, "error": error}
            back = client.get(f"/v1/oauth/crm/callback?{_query(params)}")
            assert back.status_code in {302, 422}, back.text
            if back.status_code == 302:
                outcomes.add(parse_qs(urlsplit(back.headers["location"]).query)["oauth_error"][0])

        run()
        # Forged states, and live ones with a fuzzed code or error, came back with their reason.
        assert "OAUTH_STATE_INVALID" in outcomes, outcomes
        assert outcomes & {"OAUTH_EXCHANGE_FAILED", "OAUTH_DENIED"}, outcomes
        assert client.get("/v1/credentials").json()["items"] == []
