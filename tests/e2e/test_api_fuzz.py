"""Schemathesis against the running gateway's /openapi.json: every operation, anonymous and signed
in; no 5xx, and every status, content type, header and body as the document declares."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import PASSWORD, Mesh, new_email

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


def test_signed_in_requests_conform(api_schema, fuzzed: Mesh, signed_in: dict[str, str]):
    operations = _fuzz(api_schema, fuzzed, signed_in)
    assert "PUT /v1/me/plan" in operations and "POST /v1/credentials" in operations


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
