"""`leadmesh retention …` against a whole mesh started by `leadmesh up`: the status table, purges
with progress (and as of a later time), the ledger, and an erasure case from `DELETE /v1/me` to
`erasures show`. Bad input is one line and exit status 2.

The mesh is this module's own, its retention reconciling every half second."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    PASSWORD,
    Mesh,
    SharedReceiver,
    _start_mesh,
    action,
    create,
    finished,
    register_and_login,
    runner_env,
)

OWN = {"purge_ledger", "erasure_certificates", "traces"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, inbox, oauth_provider, receiver) -> Iterator[Mesh]:
    extra = runner_env(receiver)
    extra.update(
        RETENTION_ERASURE_RECONCILE_SECONDS="0.5",
        RETENTION_DISCOVER_SECONDS="1",
    )
    yield from _start_mesh(tmp_path_factory.mktemp("retention-mesh"), inbox, oauth_provider, extra)


def _json(mesh: Mesh, *args: str):
    done = mesh.leadmesh("retention", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_up_starts_retention_and_status_shows_every_category(mesh: Mesh):
    rows = [line.split() for line in mesh.leadmesh("status").stdout.splitlines()[1:6]]
    assert {row[0]: row[1] for row in rows}["retention"] == "SERVING"

    table = mesh.leadmesh("retention", "status")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["PARTICIPANT", "CATEGORY", "MAX"]
    own = {row.split()[1]: row for row in rows if row.startswith("retention ")}
    assert set(own) == OWN and all(row.rstrip().endswith("OK") for row in own.values())
    assert "365d" in own["purge_ledger"] and "7d" in own["traces"]

    shown = _json(mesh, "status")
    participants = {c["participant"] for c in shown["categories"]}
    # Every participant of the mesh answers, each category with its counts.
    assert participants == {"identity", "vault", "runner", "retention"}
    assert {c["state"] for c in shown["categories"]} == {"OK"}, shown
    assert all(c["policy"]["category"] for c in shown["categories"])


def test_run_purges_with_progress_and_the_ledger_records_it(mesh: Mesh):
    rehearsal = _json(mesh, "run", "--participant", "retention", "--as-of", "+400d", "--dry-run")
    assert {r["category"] for r in rehearsal} == OWN
    assert {r["outcome"] for r in rehearsal} == {"dry_run"}

    done = mesh.leadmesh("retention", "run", "--participant", "retention", "--category", "traces")
    assert done.returncode == 0, done.stderr
    assert "retention/traces" in done.stderr and "[" in done.stderr  # the progress bar
    assert done.stdout.startswith("retention/traces: ok")

    entries = _json(mesh, "ledger", "--participant", "retention")
    operator = [e for e in entries if e["trigger"] == "operator"]
    assert {e["outcome"] for e in operator} >= {"ok", "dry_run"}
    assert {e["category"] for e in entries} == OWN  # the scheduled runs at start are there too
    table = mesh.leadmesh("retention", "ledger").stdout
    assert table.splitlines()[0].split()[:3] == ["START", "PARTICIPANT", "CATEGORY"]


def _a_user_with_everything(api, receiver: SharedReceiver) -> dict[str, str]:
    """A credential, a webhook connection using it, and a webhook delivered: the values of the
    user's that must be gone from every database file once the case completes."""
    secret = f"sk_erase_{uuid.uuid4().hex}"
    marker = f"lead-{uuid.uuid4().hex}"
    credential = api.post(
        "/v1/credentials",
        json={"name": "CRM", "kind": "api_key", "provider": "crm",
              "secret": {"key": secret, "header": "X-Api-Key"}},
    )  # fmt: skip
    assert credential.status_code == 201, credential.text
    path = receiver.path("erased")
    connection = create(
        api,
        trigger={"type": "webhook"},
        action=action(
            receiver.https_url(path),
            body_template={"lead": "{{ body.lead }}"},
            credential_id=credential.json()["id"],
        ),
    )
    accepted = api.post(connection["webhook_url"], json={"lead": marker})
    assert accepted.status_code == 202, accepted.text
    assert finished(api, accepted.json()["run_id"])["status"] == "succeeded"
    assert receiver.wait_to(path)[0].json() == {"lead": marker}
    return {"user_id": api.get("/v1/me").json()["id"], "secret": secret, "body": marker}


def _database_bytes(var_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(var_dir.rglob("*.db*")) if path.is_file())


def test_a_deletion_request_opens_a_case_the_operator_processes(
    mesh: Mesh, inbox, receiver: SharedReceiver
):
    with mesh.client() as api:
        address = register_and_login(api)
        traces = _a_user_with_everything(api, receiver)
        traces["email"] = address
        vault_copy = (mesh.var_dir / "vault" / "vault.db").read_bytes()
        deleted = api.request("DELETE", "/v1/me", json={"password": PASSWORD})
        assert deleted.status_code == 202, deleted.text
    # Sealed at rest (issue 15): the lead is in no database file in plaintext, even before.
    assert traces["body"].encode() not in _database_bytes(mesh.var_dir)
    assert traces["email"].encode() in _database_bytes(mesh.var_dir)  # identity's account

    deadline = time.monotonic() + 20
    while not (cases := _json(mesh, "erasures")):
        assert time.monotonic() < deadline, "no case opened"
        time.sleep(0.2)
    [case] = cases
    assert case["state"] == "open" and len(case["subject_ref"]) == 64
    listing = mesh.leadmesh("retention", "erasures").stdout
    assert case["id"] in listing and "open" in listing

    # Not due now (the grace period runs); due as of 15 days on.
    assert mesh.leadmesh("retention", "erasures", "process").stdout.strip() == (
        "no erasure case is due"
    )
    [ran] = _json(mesh, "erasures", "process", "--as-of", "+15d")
    assert ran["id"] == case["id"] and ran["state"] == "completed", ran
    steps = {s["participant"]: s for s in ran["steps"]}
    assert list(steps) == ["vault", "runner", "retention", "certificate", "identity", "sweep"]
    assert {s["state"] for s in steps.values()} == {"done"}
    # No trace of the user in any database file of the mesh (accounting records aside: this
    # user had none), however long the services' own reconcilers run meanwhile.
    time.sleep(1.5)
    files = {p: p.read_bytes() for p in sorted(mesh.var_dir.rglob("*.db*")) if p.is_file()}
    for name, value in traces.items():
        holding = [str(p.relative_to(mesh.var_dir)) for p, data in files.items()
                   if value.encode() in data]  # fmt: skip
        assert not holding, f"the user's {name} is still in {holding}"
    # The vault's file never held the secret in the clear, before as after (sealed; that a copy
    # cannot be opened once the key is shredded is tests/integration/test_vault_retention.py's).
    assert traces["secret"].encode() not in vault_copy

    shown = _json(mesh, "erasures", "show", case["id"])
    assert shown["id"] == case["id"] and address not in json.dumps(shown)
    certificate = shown["certificate"]
    assert certificate["subject_ref"] == case["subject_ref"]
    assert [p["participant"] for p in certificate["participants"]] == [
        "vault",
        "runner",
        "retention",
        "identity",
    ]
    # Mailed to the address before identity forgot it.
    mail = inbox.wait_for(address, "erased")
    assert case["id"] in mail.raw.decode(errors="replace")
    table = mesh.leadmesh("retention", "erasures", "show", case["id"]).stdout
    assert json.loads(table)["case_id"] == case["id"]
    missing = mesh.leadmesh("retention", "erasures", "show", "no-such-case")
    assert missing.returncode == 1 and "ERASURE_NOT_FOUND" in missing.stderr


def test_seal_reports_each_sealed_category_and_status_its_oldest_day_key(mesh: Mesh):
    shown = _json(mesh, "status")
    sealed = {(c["participant"], c["policy"]["category"]) for c in shown["categories"]
              if c["policy"].get("sealed")}  # fmt: skip
    assert {p for p, _ in sealed} == {"runner", "identity"}, sealed
    # A webhook went through (the erasure case's user): today's keys of the runner live.
    days = {c["policy"]["category"]: c.get("oldest_epoch_day") for c in shown["categories"]
            if c["participant"] == "runner" and c["policy"].get("sealed")}  # fmt: skip
    assert days.get("webhooks_log"), days
    header, *rows = mesh.leadmesh("retention", "status").stdout.splitlines()
    assert "OLDEST KEY" in header
    [webhooks] = [r for r in rows if r.split()[:2] == ["runner", "webhooks_log"]]
    assert days["webhooks_log"] in webhooks

    done = mesh.leadmesh("retention", "seal", "--progress")
    assert done.returncode == 0, done.stdout + done.stderr
    # Everything was written sealed: one call per category finds nothing.
    summary = {line.split(":")[0] for line in done.stdout.splitlines()}
    assert summary == {f"{p}/{c}" for p, c in sealed}, done.stdout
    assert all(", 0 still in plaintext" in line for line in done.stdout.splitlines())
    assert "runner/webhooks_log: 0 sealed, 0 in plaintext (done)" in done.stderr
    [one] = _json(mesh, "seal", "--participant", "runner", "--category", "webhooks_log")
    assert (one["participant"], one["category"], one["done"]) == ("runner", "webhooks_log", True)
    unknown = mesh.leadmesh("retention", "seal", "--category", "no_such_category")
    assert unknown.returncode == 1 and "UNKNOWN_CATEGORY" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("seal", "--nonsense"),
        ("run", "--as-of", "next week"),
        ("erasures", "process", "--as-of", "+2y"),
        ("status", "--nonsense"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(mesh: Mesh, args):
    done = mesh.leadmesh("retention", *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
