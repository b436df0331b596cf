"""A backup of the runner's and identity's databases, through the whole mesh (`leadmesh up`, one
mesh for this module): copies of their SQLite files taken before a user's erasure and before the
purge hold sealed values that open with the vault's keys at first (the sanity: the test proves the
keys, not an empty copy); once the user is erased none of theirs opens, and once the purges as of
past every sealed category's max age destroyed the day keys, no sealed value of either copy opens
with any key that remains in the mesh, and no marked lead e-mail is in any byte of the copies or
of the live files.

A copy is its service's `.db`, `-wal` and `-shm` copied together while nothing writes (the files'
sizes and times the same before and after the copy, else copied again): what a filesystem backup
holds. It is read through sqlite3 on a scratch copy of the copy, so the copy's bytes stay as
taken."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from leadmesh.vault.v1 import vault_pb2 as vpb
from leadmesh.vault.v1 import vault_pb2_grpc

from services.identity.login_history import SEALED as LOGIN_HISTORY
from services.kit.config import MeshSettings
from services.kit.grpcclient import open_channel
from services.kit.sealing import PREFIX, SealedColumns, Unreadable, UserKeys
from services.runner.sealed import ATTEMPT_DETAILS, EXECUTION_DETAILS, NOTIFICATIONS, WEBHOOK_LOG
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

SERVICES = {"runner": "runner", "identity": "identity"}  # participant: its var/ directory
RUNNERS = (WEBHOOK_LOG, EXECUTION_DETAILS, ATTEMPT_DETAILS, NOTIFICATIONS)
PLACES: dict[tuple[str, str], SealedColumns] = {
    **{("runner", c.table): c for c in RUNNERS},
    ("identity", LOGIN_HISTORY.table): LOGIN_HISTORY,
}
ACTIVE = vpb.EXECUTION_KEY_STATE_ACTIVE


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, inbox, oauth_provider, receiver: SharedReceiver) -> Iterator[Mesh]:
    extra = runner_env(receiver)
    extra.update(
        RETENTION_ERASURE_RECONCILE_SECONDS="0.5",
        RETENTION_DISCOVER_SECONDS="1",
        RUNNER_WEBHOOK_BURST="1000",
        RUNNER_WEBHOOK_RATE_PER_SECOND="1000",
    )
    yield from _start_mesh(tmp_path_factory.mktemp("sealed-backups"), inbox, oauth_provider, extra)


@dataclass
class User:
    label: str
    user_id: str
    lead: str  # the marked lead e-mail its webhooks carry
    agent: str  # the marked user agent it signs in with
    client: httpx.Client


def _user(mesh: Mesh, receiver: SharedReceiver, label: str) -> User:
    """Signs up, delivers two webhooks carrying its marked lead (one run fails once, so a
    notification quotes it), and signs in twice more with its marked user agent."""
    mark = uuid.uuid4().hex[:12]
    lead, agent = f"lead-{label}-{mark}@example.com", f"marked-agent-{label}-{mark}"
    client = mesh.client(headers={"User-Agent": agent})
    address = register_and_login(client)
    good, bad = receiver.path(f"backup-{label}"), receiver.path(f"backup-{label}-fails")
    receiver.answer(bad, 500, {"echo": lead})
    template = {"email": "{{ body.email }}"}
    for path, extra in ((good, {}), (bad, {"max_attempts": 1})):
        connection = create(
            client,
            trigger={"type": "webhook"},
            action=action(receiver.https_url(path), body_template=template),
            **extra,
        )
        accepted = client.post(connection["webhook_url"], json={"email": lead, "name": label})
        assert accepted.status_code == 202, accepted.text
        finished(client, accepted.json()["run_id"])
        assert receiver.wait_to(path)[0].json() == {"email": lead}
    for _ in range(2):
        with mesh.client(headers={"User-Agent": agent}) as again:
            signed = again.post("/v1/sessions", json={"email": address, "password": PASSWORD})
            assert signed.status_code == 200, signed.text
    return User(label, client.get("/v1/me").json()["id"], lead, agent, client)


def _files(directory: Path, service: str) -> list[Path]:
    return [directory / f"{service}.db{tail}" for tail in ("", "-wal", "-shm")]


def _backup(mesh: Mesh, into: Path) -> Path:
    """The runner's and identity's database files, each service's three copied together while
    none of them changed (their sizes and times the same before and after)."""
    for service in SERVICES.values():
        live, there = mesh.var_dir / service, into / service
        there.mkdir(parents=True)
        for _ in range(100):
            before = [(p.stat().st_size, p.stat().st_mtime_ns) for p in _files(live, service)
                      if p.exists()]  # fmt: skip
            for path in _files(live, service):
                if path.exists():
                    shutil.copy2(path, there / path.name)
            after = [(p.stat().st_size, p.stat().st_mtime_ns) for p in _files(live, service)
                     if p.exists()]  # fmt: skip
            if before == after:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{service}'s files never stood still for a copy")
    return into


@dataclass(frozen=True)
class Sealed:
    participant: str
    table: str
    column: str
    row: dict[str, Any]  # the row as the service reads it: times as datetimes
    stored: str

    @property
    def place(self) -> SealedColumns:
        return PLACES[(self.participant, self.table)]

    @property
    def owner(self) -> str:
        return self.row[self.place.owner_column]

    @property
    def ref(self) -> tuple[str, str]:
        return self.place.ref(self.row)


def _sealed_in(cell: Any) -> list[str]:
    """Every sealed value in a cell: its text, or strings anywhere in its JSON."""
    if not isinstance(cell, str):
        return []
    if cell.startswith(PREFIX):
        return [cell]
    try:
        value = json.loads(cell)
    except ValueError:
        return []
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and item.startswith(PREFIX):
            found.append(item)
        elif isinstance(item, dict):
            stack += list(item.values())
        elif isinstance(item, list):
            stack += item
    return found


def _as_time(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def _sealed_values(
    copy: Path, scratch: Path, marks: tuple[str, ...] = (), clear: set | None = None
) -> list[Sealed]:
    """Every sealed value in any column of any table of the copy (read on a scratch copy);
    `clear` gets (mark, table, column) of every cell holding one of `marks` in plaintext."""
    found = []
    for participant, service in SERVICES.items():
        here = scratch / service
        shutil.copytree(copy / service, here)
        with sqlite3.connect(here / f"{service}.db") as database:
            assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            database.row_factory = sqlite3.Row
            tables = [r[0] for r in database.execute("SELECT name FROM sqlite_master "
                                                     "WHERE type = 'table'")]  # fmt: skip
            for table in tables:
                for raw in database.execute(f'SELECT * FROM "{table}"'):  # noqa: S608
                    row = {name: _as_time(raw[name]) for name in raw.keys()}  # noqa: SIM118
                    for column in raw.keys():  # noqa: SIM118
                        text = str(raw[column])
                        if clear is not None:
                            clear.update((m, table, column) for m in marks if m in text)
                        for stored in _sealed_in(raw[column]):
                            assert (participant, table) in PLACES, (participant, table, column)
                            found.append(Sealed(participant, table, column, row, stored))
        shutil.rmtree(here)
    return found


def _keys(mesh: Mesh, values: list[Sealed]) -> dict[tuple[str, str, str, str], bytes | None]:
    """{(participant, user, category, day): the derived key if the vault answers it ACTIVE,
    else None}, asked without `create` as each participant, for every user of the copy and every
    (category, day) of that participant's values in it."""
    there = MeshSettings(
        var_dir=mesh.var_dir, vault_addr=f"127.0.0.1:{mesh.env['VAULT_PORT']}", _env_file=None
    )

    async def ask() -> dict[tuple[str, str, str, str], bytes | None]:
        users = sorted({v.owner for v in values})
        answers: dict[tuple[str, str, str, str], bytes | None] = {}
        for participant in SERVICES:
            refs = sorted({v.ref for v in values if v.participant == participant})
            channel = open_channel(there, "vault", caller=participant)
            try:
                stub = vault_pb2_grpc.VaultServiceStub(channel)
                for user in users:
                    for start in range(0, len(refs), 64):
                        asked = [vpb.ExecutionKeyRef(category=c, day=d)
                                 for c, d in refs[start : start + 64]]  # fmt: skip
                        reply = await stub.GetExecutionKeys(
                            vpb.GetExecutionKeysRequest(user_id=user, keys=asked, create=False)
                        )
                        for key in reply.keys:
                            found = key.key if key.state == ACTIVE else None
                            answers[(participant, user, key.category, key.day)] = found
            finally:
                await channel.close()
        return answers

    return asyncio.run(ask())


def _open(value: Sealed, key: bytes) -> Any:
    keys = UserKeys(value.owner, {value.ref: AESGCM(key)})
    return value.place.open_row(keys, {**value.row, value.column: value.stored})[value.column]


def _opened(mesh: Mesh, values: list[Sealed]) -> tuple[dict[int, Any], int]:
    """({index of a value: what it opened to} with its own key, and how many (value, key) pairs
    of every ACTIVE key found opened anything at all)."""
    keys = _keys(mesh, values)
    own = {}
    for index, value in enumerate(values):
        key = keys.get((value.participant, value.owner, *value.ref))
        if key is not None:
            own[index] = _open(value, key)
    live = {key for key in keys.values() if key is not None}
    any_open = 0
    for value in values:
        for key in live:
            try:
                _open(value, key)
            except Unreadable:
                continue
            any_open += 1
    return own, any_open


def _bytes(directory: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*.db*")) if p.is_file()}


def _assert_no_plaintext(directory: Path, *marks: str) -> None:
    files = _bytes(directory)
    assert files
    for mark in marks:
        holding = [name for name, data in files.items() if mark.encode() in data]
        assert not holding, f"{mark} in plaintext in {holding}"


def _json(mesh: Mesh, *args: str) -> Any:
    done = mesh.leadmesh("retention", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _erase(mesh: Mesh, user: User) -> None:
    """DELETE /v1/me, then its case executed as of past the grace period (14 days)."""
    deleted = user.client.request("DELETE", "/v1/me", json={"password": PASSWORD})
    assert deleted.status_code == 202, deleted.text
    deadline = time.monotonic() + 20
    while not (cases := _json(mesh, "erasures")):
        assert time.monotonic() < deadline, "no erasure case opened"
        time.sleep(0.2)
    [ran] = _json(mesh, "erasures", "process", "--as-of", "+15d")
    assert ran["state"] == "completed", ran
    assert ran["id"] == cases[0]["id"]


def _by_user(values: list[Sealed], opened: dict[int, Any], user: User) -> str:
    return json.dumps([opened[i] for i, v in enumerate(values) if v.owner == user.user_id and
                       i in opened], default=str)  # fmt: skip


def test_no_sealed_value_of_a_backup_opens_once_its_keys_are_destroyed(
    mesh: Mesh, receiver: SharedReceiver, tmp_path: Path
):
    a, b = _user(mesh, receiver, "a"), _user(mesh, receiver, "b")
    marks = (a.lead, b.lead)
    time.sleep(1.0)  # the last writes (attempt rows, notifications) settle

    # The backup before the erasure and the purge: every value opens with the vault's keys.
    early = _backup(mesh, tmp_path / "before-erasure")
    agents, clear = (a.agent, b.agent), set()
    values = _sealed_values(early, tmp_path / "scratch", (*marks, *agents), clear)
    print(f"sealed values in the backup taken before the erasure: {len(values)}")
    assert {v.participant for v in values} == set(SERVICES)
    assert {v.owner for v in values} >= {a.user_id, b.user_id}
    assert {v.place.category for v in values} >= {c.category for c in PLACES.values()}
    opened, _ = _opened(mesh, values)
    assert set(opened) == set(range(len(values))), "a value of the backup did not open"
    for user in (a, b):
        shown = _by_user(values, opened, user)
        assert user.lead in shown and user.agent in shown
    _assert_no_plaintext(early, *marks)
    # In the clear a marked value is in no cell but a session's own user agent (not sealed:
    # see the expected failure below), never in the login history.
    assert {(t, c) for _, t, c in clear} <= {("sessions", "user_agent")}, clear

    # B erased: none of B's values opens any more; A's still do (the lookup is not broken).
    _erase(mesh, b)
    opened, _ = _opened(mesh, values)
    assert not [i for i in opened if values[i].owner == b.user_id]
    assert a.lead in _by_user(values, opened, a) and b.lead not in json.dumps(opened, default=str)

    # The backup before the purge (after the erasure): A's values open.
    late = _backup(mesh, tmp_path / "before-purge")
    late_values = _sealed_values(late, tmp_path / "scratch", (*marks, *agents), clear)
    print(f"sealed values in the backup taken before the purge: {len(late_values)}")
    assert a.user_id in {v.owner for v in late_values}
    assert b.user_id not in {v.owner for v in late_values}  # erased from the live files
    late_opened, _ = _opened(mesh, late_values)
    assert a.lead in _by_user(late_values, late_opened, a)

    # Every sealed category purged as of past its max age (login history's 90 days too).
    runs = _json(mesh, "run", "--as-of", "+100d")
    assert {r["outcome"] for r in runs} <= {"ok"}, runs
    ledger = _json(mesh, "ledger", "--participant", "vault")
    destroyed = {e["category"]: int(e.get("rows_deleted", 0)) for e in ledger
                 if e["category"].startswith("day_keys.") and e["outcome"] == "ok"
                 and int(e.get("rows_deleted", 0)) > 0}  # fmt: skip
    every = {f"day_keys.{p}.{c.category}" for (p, _), c in PLACES.items()}
    assert every <= set(destroyed), (every, ledger)
    days = {v.ref for v in values + late_values}
    status = _json(mesh, "status")
    for item in status["categories"]:
        if item["policy"].get("sealed"):
            oldest = item.get("oldest_epoch_day", "")
            category = item["policy"]["category"]
            assert not oldest or all(d < oldest for c, d in days if c == category), item

    # Nothing of either backup opens with any key that remains, and no plaintext anywhere.
    for copy_values in (values, late_values):
        opened, any_open = _opened(mesh, copy_values)
        assert opened == {} and any_open == 0
    for directory in (early, late, mesh.var_dir / "runner", mesh.var_dir / "identity"):
        _assert_no_plaintext(directory, *marks)
    for user in (a, b):
        user.client.close()
    assert {(t, c) for _, t, c in clear} <= {("sessions", "user_agent")}, clear


@pytest.mark.xfail(
    strict=True,
    reason="identity's sessions table keeps ip_address and user_agent in plaintext "
    "(services/identity/tables.py sessions); issue 15 seals only the login history's",
)
def test_a_marked_user_agent_is_in_no_byte_of_identitys_backup(mesh: Mesh, tmp_path: Path):
    agent = f"marked-agent-session-{uuid.uuid4().hex[:12]}"
    with mesh.client(headers={"User-Agent": agent}) as client:
        register_and_login(client)
    copy = _backup(mesh, tmp_path / "backup")
    _assert_no_plaintext(copy / "identity", agent)
