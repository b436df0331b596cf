"""Secrets and personal data never reach logs or spans: known values go through every identity
flow, then every log line and exported span of every process is searched for them."""

from __future__ import annotations

import re
import time
import uuid

import httpx

from tests.e2e.conftest import Mesh, new_email


def test_no_password_token_or_email_in_logs_or_spans(api: httpx.Client, mesh_up: Mesh, inbox):
    address = new_email("secretive")
    password = f"canary-password-{time.monotonic_ns()}"
    new_password = f"canary-new-password-{time.monotonic_ns()}"
    assert api.post("/v1/accounts", json={"email": address, "password": password}).is_success
    api.post("/v1/sessions", json={"email": address, "password": "wrong-" + password})
    signed = api.post("/v1/sessions", json={"email": address, "password": password})
    session_token, csrf = api.cookies["lm_session"], signed.json()["csrf_token"]
    api.headers["X-CSRF-Token"] = csrf
    api.get("/v1/me")
    # Letters, not long digit runs: those may be refused as card numbers.
    billing_name = f"Canary Billing {uuid.uuid4().hex[:10]}"
    street = f"Canary Street {uuid.uuid4().hex[:10]}"
    upgraded = api.put(
        "/v1/me/plan",
        json={
            "plan": "pro",
            "billing_name": billing_name,
            "billing_address": {
                "line1": street,
                "city": "Berlin",
                "postal_code": "10115",
                "country": "DE",
            },
            "payment_reference": "pi_canary_reference",
        },
    )
    assert upgraded.status_code == 200, upgraded.text
    refused = api.put(
        "/v1/me/plan",
        json={"plan": "pro", "billing_name": "x", "payment_reference": "4111 1111 1111 1111"},
    )
    assert refused.json()["code"] == "CARD_DATA_REFUSED" and "4111" not in refused.text
    api.post("/v1/password-resets", json={"email": address})
    mail = inbox.wait_for(address)
    reset_token = re.search(r"token=([A-Za-z0-9_\-]+)", mail.get_body(("plain",)).get_content())[1]
    api.post(
        "/v1/password-resets/confirm", json={"token": reset_token, "new_password": new_password}
    )

    time.sleep(1.5)  # spans are exported in batches (every 0.2 s here)
    traces = sorted((mesh_up.var_dir / "traces").glob("*.jsonl"))
    assert {p.stem for p in traces} >= {"gateway", "identity"}
    corpus = "".join(mesh_up.output) + "".join(p.read_text() for p in traces)
    assert '"service": "identity"' in corpus and '"service": "gateway"' in corpus  # logs seen
    secrets = (password, new_password, session_token, csrf, reset_token, address, billing_name)
    for secret in (*secrets, street, "pi_canary_reference", "4111 1111 1111 1111"):
        assert secret not in corpus, f"{secret[:12]}… leaked into logs or spans"
    assert address.split("@")[0] not in corpus
