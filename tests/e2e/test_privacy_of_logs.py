"""Secrets and personal data never reach logs, spans or metrics: known values go through every
identity flow, then every log line, exported span and `GET /metrics` answer of every process is
searched for them (the metrics exported by OTLP: tests/e2e/test_metrics.py)."""

from __future__ import annotations

import re
import stat
import time
import uuid

import httpx

from tests.e2e.conftest import Mesh, finished, new_email, register_and_login


def test_no_password_token_or_email_in_logs_or_spans(api: httpx.Client, mesh_up: Mesh, inbox):
    address = new_email("secretive")
    password = f"canary-password-{time.monotonic_ns()}"
    new_password = f"canary-new-password-{time.monotonic_ns()}"
    assert api.post("/v1/accounts", json={"email": address, "password": password}).is_success
    api.post("/v1/sessions", json={"email": address, "password": "wrong-" + password})
    signed = api.post("/v1/sessions", json={"email": address, "password": password})
    session_token, csrf = api.cookies["lm_session"], signed.json()["csrf_token"]
    api.headers["X-CSRF-Token"] = csrf
    user_id = api.get("/v1/me").json()["id"]
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
    corpus = "".join(mesh_up.output) + "".join(p.read_text() for p in traces) + _metrics(mesh_up)
    assert '"service": "identity"' in corpus and '"service": "gateway"' in corpus  # logs seen
    assert "leadmesh_logins_total{" in corpus  # the metrics are seen
    secrets = (password, new_password, session_token, csrf, reset_token, address, billing_name)
    assert user_id not in _metrics(mesh_up), "a user id is a label of some metric"
    for secret in (*secrets, street, "pi_canary_reference", "4111 1111 1111 1111"):
        assert secret not in corpus, f"{secret[:12]}… leaked into logs or spans"
    assert address.split("@")[0] not in corpus


def test_no_webhook_token_signing_secret_or_credential_in_logs_or_spans(
    api: httpx.Client, mesh_up: Mesh, receiver
):
    import hashlib
    import hmac

    register_and_login(api)
    user_id = api.get("/v1/me").json()["id"]
    key = f"sk_canary_delivery_{uuid.uuid4().hex}"
    credential = api.post(
        "/v1/credentials",
        json={
            "name": "CRM",
            "kind": "api_key",
            "provider": "crm",
            "secret": {"key": key, "query": "api_key"},
        },
    ).json()["id"]
    signing_secret = f"whsec_canary_{uuid.uuid4().hex}"
    target = receiver.path("privacy")
    created = api.post(
        "/v1/connections",
        json={
            "name": "Canary hook",
            "trigger": {"type": "webhook"},
            "action": {
                "type": "http",
                "url": receiver.https_url(target),
                "body_template": {"email": "{{ body.email }}"},
                "credential_id": credential,
            },
            "signing_secret": signing_secret,
        },
    )
    assert created.status_code == 201, created.text
    first_url = created.json()["webhook_url"]
    rotated = api.post(f"/v1/connections/{created.json()['id']}/rotate-token").json()
    url = rotated["webhook_url"]
    lead_email = new_email("canary-lead")
    third_party = f"Bearer canary-third-party-{uuid.uuid4().hex}"
    body = f'{{"email": "{lead_email}"}}'.encode()
    stamp = int(time.time())
    mac = hmac.new(signing_secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    with mesh_up.client() as caller:
        headers = {"Content-Type": "application/json", "Authorization": third_party}
        signed = {**headers, "X-Leadmesh-Signature": f"t={stamp},v1={mac.hexdigest()}"}
        accepted = caller.post(url, content=body, headers=signed)
        assert accepted.status_code == 202, accepted.text
        assert caller.post(url, content=body, headers=headers).status_code == 401
        assert caller.post(first_url, content=body, headers=signed).status_code == 404
        assert caller.get(url).status_code == 405
        assert caller.post(url + "/more", content=body).status_code == 404  # no route at all
        assert caller.post(url + "x" * 200, content=body).status_code in (404, 422)
        assert caller.post(url + "?token=" + url.rsplit("/", 1)[1], content=b"").status_code == 401
    [delivered] = receiver.wait_to(target)
    assert delivered.json() == {"email": lead_email} and key in delivered.query
    assert finished(api, accepted.json()["run_id"])["status"] == "succeeded"

    time.sleep(1.5)  # spans are exported in batches (every 0.2 s here)
    traces = sorted((mesh_up.var_dir / "traces").glob("*.jsonl"))
    assert {p.stem for p in traces} >= {"gateway", "runner"}
    metrics = _metrics(mesh_up)
    corpus = "".join(mesh_up.output) + "".join(p.read_text() for p in traces) + metrics
    assert '"service": "runner"' in corpus  # the runner's logs are seen
    assert "leadmesh_webhooks_refused_total{" in metrics and "leadmesh_deliveries_total{" in metrics
    assert user_id not in metrics and target not in metrics, "a metric names a user or a path"
    tokens = [u.rsplit("/", 1)[1] for u in (first_url, url)]
    for secret in (*tokens, signing_secret, key, third_party, lead_email):
        assert secret not in corpus, f"{secret[:12]}… leaked:\n" + "\n".join(
            line.replace(secret, "<SECRET>")[:400] for line in corpus.splitlines() if secret in line
        )


def _metrics(mesh: Mesh) -> str:
    """What every process answers at GET /metrics."""
    answers = [mesh.scrape(process) for process in mesh.metrics_ports()]
    assert all(answer.status_code == 200 for answer in answers)
    return "".join(answer.text for answer in answers)


def test_var_and_every_database_are_the_operators_alone(mesh_up: Mesh, api: httpx.Client):
    """runner.db holds webhook bodies and signing secrets, vault.db sealed credentials: after
    `leadmesh up` (migrate, then every service serving and writing) no other local user can read
    them — var/ and each service's directory 0700, each database and its -wal/-shm 0600."""
    register_and_login(api)  # writes to identity's database: its -wal and -shm exist
    databases = sorted(mesh_up.var_dir.glob("*/*.db"))
    assert {p.name for p in databases} >= {"identity.db", "vault.db", "runner.db"}
    journals = [p for p in mesh_up.var_dir.glob("*/*.db-*") if p.suffix in (".db-wal", ".db-shm")]
    assert any(p.name == "runner.db-wal" for p in journals), journals
    for path in [*databases, *journals]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    for directory in [mesh_up.var_dir, *{p.parent for p in databases}]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    # Everything else under var/ (keys, mail, traces) is no one else's either.
    for path in mesh_up.var_dir.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))
