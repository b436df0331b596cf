"""Deliveries that go wrong, through a real runner over gRPC to real receivers: an outcome the
database would refuse (a NUL in a body, an enormous error) never fails another user's outcomes,
nor leaves its own run `running`; an exception inside an attempt costs an attempt; an odd
Retry-After is ignored; a name that does not resolve is retried; our own outage holds a run only
for so long; a stored secret with a control character never reaches an error; and each attempt
and failure is one log line with ids, never the URL or a secret. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from leadmesh.runner.v1 import runner_pb2 as rpb

from services.kit.callers import user_metadata
from services.kit.config import MeshSettings
from services.kit.logs import JsonFormatter
from services.runner.model import Attempt, Outcome, RunResult
from services.runner.recorder import Recorder
from services.vault.datakeys import sealed_columns
from services.vault.server import start as start_vault
from tests.integration import runner_support
from tests.integration.runner_support import RunnerMesh, runner_mesh
from tests.support.receiver import DEFAULT_REPLY, Receiver

USER_A, USER_B = "user-a", "user-b"
receiver, rm = runner_support.receiver, runner_support.rm  # the shared fixtures
LEASE_SECONDS = 2.0  # an outcome never recorded is delivered again this soon
RUNNER_OVERRIDES = {"lease_seconds": LEASE_SECONDS}


async def connection_of(rm: RunnerMesh, user: str, connection_id: str) -> rpb.Connection:
    return await rm.stub.GetConnection(
        rpb.GetConnectionRequest(id=connection_id), metadata=user_metadata(user)
    )


async def test_an_outcome_the_database_would_refuse_never_fails_another_users_outcomes(
    rm: RunnerMesh, receiver: Receiver
):
    nul_body = b'{"ok": true}\x00 and then some'

    def answer(request):
        if request.path == "/a-nul":
            return 200, {"content-type": "application/json"}, nul_body
        return DEFAULT_REPLY

    # Slow enough that outcomes gather into shared batches.
    receiver.respond_with(answer, delay=0.05)
    nul = await rm.connection(USER_A, receiver.https_url("/a-nul"))
    # h11 refuses the control character and quotes the whole 3 000-character value in its error,
    # retried: "{error} (after 2 attempts)" is longer than runs.error.
    header = await rm.connection(
        USER_A, receiver.https_url("/a-header"), headers={"X-Note": "{{ body.note }}"},
        max_attempts=2,
    )  # fmt: skip
    # JMESPath quotes the value it refuses: a render error of 3 000 characters and more.
    render = await rm.connection(
        USER_A, receiver.https_url("/a-render"), body_template={"n": "{{ abs(body.note) }}"}
    )
    other = await rm.connection(USER_B, receiver.https_url("/b"))
    note = "\x0b" + "n" * 3000  # a vertical tab: the header template keeps it
    a_runs = (
        rm.run(USER_A, nul.connection.id, {}),
        rm.run(USER_A, header.connection.id, {"note": note}),
        rm.run(USER_A, render.connection.id, {"note": note}),
    )
    *b_runs, nul_run, header_run, render_run = await asyncio.gather(
        *(rm.run(USER_B, other.connection.id, {"i": i}) for i in range(20)), *a_runs
    )

    for run_id in b_runs:
        assert (await rm.finished(USER_B, run_id, timeout=30)).run.status == "succeeded"
    # B's API got each run once: no batch failed, so nothing was leased and delivered again.
    delivered = Counter(r.headers["idempotency-key"] for r in receiver.requests if r.path == "/b")
    assert delivered == dict.fromkeys(b_runs, 1)

    # A's runs ended, none stays `running`.
    detail = await rm.finished(USER_A, nul_run, timeout=30)
    assert detail.run.status == "succeeded"
    (attempt,) = detail.attempts
    assert attempt.response_body_encoding == "base64"
    assert base64.b64decode(attempt.response_body) == nul_body
    detail = await rm.finished(USER_A, header_run, timeout=30)
    assert detail.run.status == "failed" and detail.run.attempts == 2
    assert len(detail.run.error) <= 1000 and detail.run.error.endswith("(after 2 attempts)")
    assert all(len(a.error) <= 1000 for a in detail.attempts)
    detail = await rm.finished(USER_A, render_run, timeout=30)
    assert detail.run.status == "failed" and detail.run.error.startswith("rendering")
    assert len(detail.run.error) <= 1000
    assert all(len(n.message) <= 1000 for n in await rm.notifications(USER_A))


async def test_an_outcome_that_cannot_be_stored_is_recorded_as_failed_alone(
    tmp_path: Path, mesh: MeshSettings, database_url: str, receiver: Receiver
):
    async with runner_mesh(tmp_path, mesh.pki_dir, database_url, workers=0) as rm:
        made = {
            user: await rm.connection(user, receiver.https_url("/x")) for user in (USER_A, USER_B)
        }
        runs = {user: await rm.run(user, made[user].connection.id, {}) for user in made}
        core = rm.runner.parts.core
        now = core.clock.now()
        async with core.store.begin() as tx:  # claimed as a worker would
            await tx.runs.claim(list(runs.values()), now, now + timedelta(seconds=60), "w-test")
        recorder = Recorder(core.store, core.clock, pause_after=5)

        def succeeded(user: str, start_time) -> Outcome:
            row = RunResult(runs[user], "w-test", 1, "succeeded", None, finish_time=now)
            attempt = Attempt(run_id=runs[user], user_id=user, number=1,
                              start_time=start_time, finish_time=now, request={},
                              response_status=200, response_headers=[], response_body="",
                              response_body_encoding="text", response_truncated=False,
                              error=None)  # fmt: skip
            return Outcome(row, made[user].connection.id, user, (attempt,), final="succeeded")

        # One batch: A's attempt holds a value every database driver refuses.
        await asyncio.gather(
            recorder.record(succeeded(USER_A, "not a time")),
            recorder.record(succeeded(USER_B, now)),
        )
        a = await rm.detail(USER_A, runs[USER_A])
        assert a.run.status == "failed" and "could not be stored" in a.run.error
        assert list(a.attempts) == []
        b = await rm.detail(USER_B, runs[USER_B])
        assert b.run.status == "succeeded" and [x.response_status for x in b.attempts] == [200]
        assert (
            await connection_of(rm, USER_A, made[USER_A].connection.id)
        ).consecutive_failures == 1


async def test_a_retry_after_that_is_not_ascii_digits_is_ignored(rm: RunnerMesh, receiver):
    # "²".isdigit() is True and float("²") raises: RFC 9110 delta-seconds are ASCII digits.
    receiver.respond(503, {"Retry-After": "²"}, times=2)
    made = await rm.connection(USER_A, receiver.https_url("/odd-retry-after"), max_attempts=3)
    detail = await rm.finished(USER_A, await rm.run(USER_A, made.connection.id, {}), timeout=10)
    assert detail.run.status == "succeeded" and detail.run.attempts == 3
    assert [a.error for a in detail.attempts] == ["HTTP 503", "HTTP 503", ""]


async def test_an_exception_inside_an_attempt_costs_an_attempt_and_counts_as_a_failure(
    rm: RunnerMesh, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    def broken(_headers):  # a library failing the same way each time, as "²" made float fail
        raise ValueError("a deterministic bug")

    monkeypatch.setattr(httpx.Headers, "multi_items", broken)
    made = await rm.connection(USER_A, receiver.https_url("/crash"), max_attempts=2)
    detail = await rm.finished(USER_A, await rm.run(USER_A, made.connection.id, {}), timeout=10)
    assert detail.run.status == "failed" and detail.run.attempts == 2
    assert detail.run.error == "internal error (ValueError) (after 2 attempts)"
    assert [a.number for a in detail.attempts] == [1, 2]
    assert len(receiver.requests) == 2
    assert (await connection_of(rm, USER_A, made.connection.id)).consecutive_failures == 1


async def test_a_name_that_does_not_resolve_is_retried_like_a_network_error(rm: RunnerMesh):
    # .invalid never resolves (RFC 6761): a lookup that fails, as one may for a while.
    made = await rm.connection(USER_A, "https://lead-api.invalid/in", max_attempts=3)
    detail = await rm.finished(USER_A, await rm.run(USER_A, made.connection.id, {}), timeout=10)
    assert detail.run.status == "failed" and detail.run.attempts == 3
    assert [a.error for a in detail.attempts] == ["lead-api.invalid does not resolve"] * 3
    assert detail.run.error == "lead-api.invalid does not resolve (after 3 attempts)"


async def test_our_own_outage_holds_a_run_only_for_outage_hold_seconds(
    tmp_path: Path, mesh: MeshSettings, database_url: str, receiver: Receiver
):
    async with runner_mesh(
        tmp_path, mesh.pki_dir, database_url, ca_file=str(receiver.ca_file),
        credential_cache_seconds=0, outage_hold_seconds=2,
    ) as rm:  # fmt: skip
        credential = await rm.credential(
            USER_A, "api_key", {"key": "sk_test_outage_0123456789", "header": "X-Api-Key"}
        )
        made = await rm.connection(
            USER_A, receiver.https_url("/held"), credential_id=credential, max_attempts=2
        )
        # Sealing: the run is accepted only with its keys in hand (held in memory here).
        await rm.keys_in_memory(USER_A)
        settings, port = rm.vault.parts.settings, rm.vault.port
        await rm.vault.stop(grace=0)
        try:
            run_id = await rm.run(USER_A, made.connection.id, {})
            held = None
            for _ in range(40):  # first held without using an attempt
                held = (await rm.detail(USER_A, run_id)).run
                if "vault is unreachable" in held.error:
                    break
                await asyncio.sleep(0.05)
            assert held is not None and held.status in ("queued", "running")
            assert "vault is unreachable" in held.error and held.attempts == 0
            # Past the hold, each outage costs an attempt: the run's maximum ends it.
            detail = await rm.finished(USER_A, run_id, timeout=20)
        finally:
            rm.vault = await start_vault(settings, port=port)
        assert detail.run.status == "failed" and detail.run.attempts == 2
        assert "vault is unreachable" in detail.run.error
        assert receiver.requests == []


async def stored_with(rm: RunnerMesh, user: str, secret: dict) -> str:
    """A credential holding `secret` as rows saved before the vault refused control characters
    in header values do: sealed by the vault's own code, past its checks."""
    credential_id = await rm.credential(
        user, "api_key", {"key": "placeholder-0123456789", "header": "X-Api-Key"}
    )
    vault = rm.vault.parts
    async with vault.store.begin() as tx:
        found = await vault.data_keys.get(tx, user, create=False)
        assert found is not None
        key, generation = found
        columns = sealed_columns(key, generation, user, credential_id, "api_key", secret)
        await tx.update_credential(credential_id, **columns)
    vault.sealed.forget()
    return credential_id


@pytest.mark.parametrize(
    ("secret", "parts"),
    [
        ("sk_live_0123456789abcdef\n", ["sk_live_0123456789abcdef"]),
        ("sk_live_fedcba9876543210\x0c", ["sk_live_fedcba9876543210"]),
        (
            "line-one-0123456789\nline-two-9876543210",
            ["line-one-0123456789", "line-two-9876543210"],
        ),
    ],
    ids=["trailing-newline", "trailing-form-feed", "two-lines"],
)
async def test_a_stored_secret_with_a_control_character_is_scrubbed_from_every_error(
    rm: RunnerMesh, receiver: Receiver, secret: str, parts: list[str]
):
    credential = await stored_with(rm, USER_A, {"key": secret, "header": "X-Api-Key"})
    made = await rm.connection(
        USER_A, receiver.https_url("/scrubbed"), credential_id=credential, max_attempts=2
    )
    detail = await rm.finished(USER_A, await rm.run(USER_A, made.connection.id, {}), timeout=10)
    assert detail.run.status == "failed" and detail.run.attempts == 2
    # h11 refused the header and quoted it: that is the error recorded, scrubbed.
    assert "Illegal header value" in detail.attempts[0].error
    assert "[redacted]" in detail.attempts[0].error
    notices = [n.message for n in await rm.notifications(USER_A)]
    assert notices and "[redacted]" in notices[0]
    for text in [detail.run.error, *(a.error for a in detail.attempts), *notices]:
        for part in parts:
            assert part not in text, text
    assert receiver.requests == []


async def test_each_attempt_and_each_failure_is_one_log_line_with_ids_never_the_url_or_secret(
    rm: RunnerMesh, receiver: Receiver, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="leadmesh.runner")
    key = "sk_test_logline_0123456789"
    credential = await rm.credential(USER_A, "api_key", {"key": key, "query": "api_key"})
    receiver.respond(503)
    flaky = await rm.connection(
        USER_A, receiver.https_url("/logged-ok?lead=path-canary"), credential_id=credential,
        max_attempts=3,
    )  # fmt: skip
    ok = await rm.run(USER_A, flaky.connection.id, {"email": "ann@example.com"})
    assert (await rm.finished(USER_A, ok)).run.status == "succeeded"
    receiver.respond(422, body={"error": "bad email ann@example.com"})
    strict = await rm.connection(USER_A, receiver.https_url("/logged-bad"), max_attempts=3)
    bad = await rm.run(USER_A, strict.connection.id, {"email": "ann@example.com"})
    assert (await rm.finished(USER_A, bad)).run.status == "failed"

    def lines(run_id: str, event: str) -> list[logging.LogRecord]:
        return [
            r for r in caplog.records
            if getattr(r, "run_id", None) == run_id and r.getMessage() == event
        ]  # fmt: skip

    assert [(r.attempt, r.outcome, r.status_code) for r in lines(ok, "delivery attempt")] == [
        (1, "retrying", 503),
        (2, "succeeded", 200),
    ]
    assert [(r.attempt, r.outcome, r.status_code) for r in lines(bad, "delivery attempt")] == [
        (1, "failed", 422)
    ]
    (failed,) = lines(bad, "run failed")
    assert (failed.attempt, failed.outcome, failed.problem) == (1, "failed", "HTTP 422")
    assert not lines(ok, "run failed")
    mine = [r for r in caplog.records if getattr(r, "run_id", None) in (ok, bad)]
    formatter = JsonFormatter("runner")
    for record in mine:
        assert record.connection_id in (flaky.connection.id, strict.connection.id)
        assert isinstance(record.duration_ms, float) and record.duration_ms >= 0
        line = formatter.format(record)
        for never in ("/logged", "path-canary", key, "ann@example.com", "api_key="):
            assert never not in line, line
