"""The vault on a real SQLite file and a real PostgreSQL: secrets sealed where they belong and
nowhere else, keys that rotate without losing anything, and crypto-shredding."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from services.kit.errors import DataLoss, InvalidArgument, NotFound, Unavailable
from services.vault.keys import seal, secret_aad
from services.vault.server import Parts
from services.vault.tables import credentials, metadata, user_keys
from tests.integration.vault_support import SECRETS, secret_values, vault_settings


@pytest.mark.parametrize("kind", ["api_key", "login", "oauth2"])
async def test_round_trip_per_kind(vault_parts: Parts, kind: str):
    vault = vault_parts
    created = await vault.credentials.create(
        "gateway", "user-a", f"My {kind}", kind, "acme", SECRETS[kind]
    )
    assert created["kind"] == kind and created["status"] == "active"
    assert not any(
        v in str(created.get(k)) for v in secret_values(SECRETS[kind]) for k in ("hint", "name")
    )
    resolved = await vault.resolver.resolve("runner", "user-a", created["id"], "conn-1")
    assert resolved.secret == SECRETS[kind]
    assert "secret" not in resolved.credential and "wrapped_key" not in resolved.credential


async def _dump_database(parts: Parts, database_url: str, tmp_path: Path) -> bytes:
    """Every byte the database holds: the SQLite files, or every PostgreSQL row as text."""
    engine = parts.store.engine
    if database_url.startswith("sqlite"):
        await engine.dispose()
        files = sorted(tmp_path.glob("service.db*"))  # noqa: ASYNC240 - a test reading a file
        return b"".join(p.read_bytes() for p in files)
    async with engine.connect() as connection:
        chunks = []
        for table in metadata.sorted_tables:
            rows = await connection.execute(text(f"SELECT t::text FROM {table.name} t"))
            chunks += [row[0].encode() for row in rows]
    return b"\n".join(chunks)


async def test_the_database_holds_no_plaintext_secret(
    vault_parts: Parts, database_url: str, tmp_path: Path
):
    vault = vault_parts
    for kind, secret in SECRETS.items():
        created = await vault.credentials.create("gateway", "user-a", kind, kind, "acme", secret)
        await vault.resolver.resolve("runner", "user-a", created["id"], "conn-1")
    dump = await _dump_database(vault_parts, database_url, tmp_path)
    assert b"user-a" in dump  # the scan does see the rows
    for secret in SECRETS.values():
        for value in secret_values(secret):
            assert value.encode() not in dump, value[:10]


async def test_tampered_moved_or_foreign_ciphertext_fails_closed(vault_parts: Parts):
    vault = vault_parts
    a1 = await vault.credentials.create(
        "gateway", "user-a", "one", "api_key", "acme", SECRETS["api_key"]
    )
    a2 = await vault.credentials.create(
        "gateway", "user-a", "two", "api_key", "acme", SECRETS["api_key"]
    )
    b1 = await vault.credentials.create(
        "gateway", "user-b", "bee", "api_key", "acme", SECRETS["api_key"]
    )
    async with vault.store.engine.begin() as connection:
        sealed = (
            await connection.execute(
                select(credentials.c.secret).where(credentials.c.id == a1["id"])
            )
        ).scalar_one()
        flipped = bytes([sealed[0], sealed[1] ^ 1]) + sealed[2:]
        await connection.execute(
            update(credentials).where(credentials.c.id == a2["id"]).values(secret=sealed)
        )
        await connection.execute(
            update(credentials).where(credentials.c.id == b1["id"]).values(secret=sealed)
        )
        await connection.execute(
            update(credentials).where(credentials.c.id == a1["id"]).values(secret=flipped)
        )
    for user, credential in (("user-a", a1), ("user-a", a2), ("user-b", b1)):
        with pytest.raises(DataLoss) as refused:
            await vault.resolver.resolve("runner", user, credential["id"], "conn-1")
        assert refused.value.reason == "SECRET_UNREADABLE"


async def test_format_1_secrets_still_open_and_a_row_cannot_claim_another_format(
    vault_parts: Parts,
):
    """Rows sealed before format 2 hold JSON, with associated data naming format 1: they resolve
    and survive a per-user key rotation; a row whose format is changed fails closed."""
    vault, admin = vault_parts, vault_parts.admin
    old = await vault.credentials.create(
        "gateway", "user-a", "old", "oauth2", "acme", SECRETS["oauth2"]
    )
    other = await vault.credentials.create(
        "gateway", "user-b", "b", "api_key", "acme", SECRETS["api_key"]
    )
    async with vault.store.begin() as tx:
        key, _ = await vault.data_keys.get(tx, "user-a", create=False)  # type: ignore[misc]
    plaintext = json.dumps(SECRETS["oauth2"]).encode()
    as_format_1 = seal(key, plaintext, secret_aad("user-a", old["id"], "oauth2", 1))
    async with vault.store.engine.begin() as connection:
        await connection.execute(
            update(credentials)
            .where(credentials.c.id == old["id"])
            .values(secret=as_format_1, format_version=1)
        )
        await connection.execute(
            update(credentials).where(credentials.c.id == other["id"]).values(format_version=1)
        )
    vault.sealed.forget()  # the rows were changed behind the vault's back
    resolved = await vault.resolver.resolve("runner", "user-a", old["id"], "c")
    assert resolved.secret == SECRETS["oauth2"] and resolved.struct["access_token"]
    with pytest.raises(DataLoss) as refused:
        await vault.resolver.resolve("runner", "user-b", other["id"], "c")
    assert refused.value.reason == "SECRET_UNREADABLE"
    assert await admin.rotate_user_key("operator", "user-a") == 1
    async with vault.store.engine.connect() as connection:
        kept = (
            await connection.execute(
                select(credentials.c.format_version).where(credentials.c.id == old["id"])
            )
        ).scalar_one()
    assert kept == 1  # re-encrypted as it was
    assert (await vault.resolver.resolve("runner", "user-a", old["id"], "c")).secret == SECRETS[
        "oauth2"
    ]


async def test_another_users_credential_is_not_found_everywhere(vault_parts: Parts):
    vault = vault_parts
    mine = await vault.credentials.create(
        "gateway", "user-a", "mine", "login", "acme", SECRETS["login"]
    )
    for attempt in (
        vault.credentials.get("user-b", mine["id"]),
        vault.credentials.update("gateway", "user-b", mine["id"], ["name"], name="stolen"),
        vault.credentials.delete("gateway", "user-b", mine["id"]),
        vault.resolver.resolve("runner", "user-b", mine["id"], "conn-1"),
    ):
        with pytest.raises(NotFound):
            await attempt
    assert (await vault.credentials.list("user-b", 10, ""))[0] == []
    assert (await vault.credentials.get("user-a", mine["id"]))["name"] == "mine"


async def test_list_pages_newest_first(vault_parts: Parts, clock):
    vault = vault_parts
    for n in range(5):
        clock.advance(1)
        await vault.credentials.create(
            "gateway", "user-a", f"c{n}", "api_key", "acme", SECRETS["api_key"]
        )
    page, token = await vault.credentials.list("user-a", 2, "")
    assert [c["name"] for c in page] == ["c4", "c3"] and token
    page, token = await vault.credentials.list("user-a", 2, token)
    assert [c["name"] for c in page] == ["c2", "c1"]
    page, token = await vault.credentials.list("user-a", 2, token)
    assert [c["name"] for c in page] == ["c0"] and token == ""
    with pytest.raises(InvalidArgument):
        await vault.credentials.list("user-a", 2, "forged")


@pytest.mark.parametrize(
    ("kind", "secret", "field"),
    [
        ("api_key", {"key": "sk_live_0123456789\n", "header": "X-Api-Key"}, "secret.key"),
        ("api_key", {"key": "sk_live_0123456789\x00", "query": "k"}, "secret.key"),
        ("api_key", {"key": "sk_live_\u20ac0123456789", "header": "X-Api-Key"}, "secret.key"),
        ("oauth2", {"access_token": "at_0123456789\r"}, "secret.access_token"),
        ("login", {"username": "ann\x1b", "password": "pw"}, "secret.username"),
    ],
)
async def test_a_secret_that_cannot_go_into_its_request_is_refused_on_create_and_update(
    vault_parts: Parts, kind: str, secret: dict, field: str
):
    vault = vault_parts
    with pytest.raises(InvalidArgument) as refused:
        await vault.credentials.create("gateway", "user-a", "pasted", kind, "acme", secret)
    assert refused.value.reason == "INVALID_SECRET" and refused.value.field == field
    fine = {k: v.rstrip("\n\r\x00\x1b").replace("\u20ac", "") for k, v in secret.items()}
    made = await vault.credentials.create("gateway", "user-a", "typed", kind, "acme", fine)
    with pytest.raises(InvalidArgument) as refused:
        await vault.credentials.update("gateway", "user-a", made["id"], ["secret"], secret=secret)
    assert refused.value.field == field
    resolved = await vault.resolver.resolve("runner", "user-a", made["id"], "conn-1")
    # The refused change left the stored secret as it was.
    assert {k: resolved.secret[k] for k in fine} == fine


async def test_updates_reseal_and_the_audit_log_names_everything_but_secrets(vault_parts: Parts):
    vault = vault_parts
    created = await vault.credentials.create(
        "gateway", "user-a", "k", "api_key", "acme", SECRETS["api_key"]
    )
    new_secret = {"key": "sk_live_replacement_key_987654321", "query": "api_key"}
    updated = await vault.credentials.update(
        "gateway", "user-a", created["id"], ["name", "secret"], name="renamed", secret=new_secret
    )
    assert updated["name"] == "renamed" and updated["hint"] == "…4321"
    assert (
        await vault.resolver.resolve("runner", "user-a", created["id"], "conn-7")
    ).secret == new_secret
    await vault.credentials.delete("gateway", "user-a", created["id"])
    async with vault.store.begin() as tx:
        events = await tx.audit_events("user-a")
    assert [(e["action"], e["caller"], e["outcome"]) for e in events] == [
        ("create", "gateway", "ok"),
        ("update", "gateway", "ok"),
        ("resolve", "runner", "ok"),
        ("delete", "gateway", "ok"),
    ]
    assert events[2]["connection_id"] == "conn-7"
    assert "sk_live" not in repr(events)


async def test_kek_rotation_under_concurrent_resolves_loses_nothing(vault_parts: Parts):
    vault, admin = vault_parts, vault_parts.admin
    created = [
        await vault.credentials.create(
            "gateway", f"user-{n}", "k", "api_key", "acme", SECRETS["api_key"]
        )
        for n in range(40)
    ]
    await admin.begin_rotation()
    failures: list[Exception] = []
    rotating = True

    async def resolver(offset: int) -> int:
        done = 0
        while rotating:
            for n in range(offset, 40, 4):
                try:
                    resolved = await vault.resolver.resolve(
                        "runner", f"user-{n}", created[n]["id"], "c"
                    )
                    assert resolved.secret == SECRETS["api_key"]
                    done += 1
                except Exception as error:  # noqa: BLE001 - collected and asserted below
                    failures.append(error)
            # A pass served from the cache awaits nothing; a server's calls yield between them.
            await asyncio.sleep(0)
        return done

    readers = [asyncio.ensure_future(resolver(offset)) for offset in range(4)]
    remaining = 1
    while remaining:
        _, remaining, current = await admin.rewrap(batch_size=3)
        await asyncio.sleep(0)
    rotating = False
    resolved_during = sum(await asyncio.gather(*readers))
    assert failures == [] and resolved_during > 0
    status = await admin.status()
    assert status["pending"] == 0 and dict((v, n) for v, _, n in status["versions"]) == {
        "v1": 0,
        current: 40,
    }
    await admin.retire("v1")
    for n in range(40):
        await vault.resolver.resolve("runner", f"user-{n}", created[n]["id"], "c")


async def test_a_retired_or_missing_kek_fails_closed(vault_parts: Parts):
    vault, admin = vault_parts, vault_parts.admin
    created = await vault.credentials.create(
        "gateway", "user-a", "k", "api_key", "acme", SECRETS["api_key"]
    )
    await admin.begin_rotation()
    with pytest.raises(Exception) as in_use:
        await admin.retire("v1")
    assert getattr(in_use.value, "reason", "") == "KEY_VERSION_IN_USE"
    vault.data_keys.keyring.remove_version("v1")  # as if an operator dropped a version too early
    with pytest.raises(Unavailable) as refused:
        await vault.resolver.resolve("runner", "user-a", created["id"], "c")
    assert refused.value.reason == "KEY_UNAVAILABLE"


async def test_per_user_rotation_reencrypts_that_users_secrets(vault_parts: Parts):
    vault, admin = vault_parts, vault_parts.admin
    created = await vault.credentials.create(
        "gateway", "user-a", "k", "login", "acme", SECRETS["login"]
    )
    async with vault.store.engine.connect() as connection:
        before = (await connection.execute(select(credentials.c.secret))).scalar_one()
        key_before = (await connection.execute(select(user_keys.c.wrapped_key))).scalar_one()
    assert await admin.rotate_user_key("operator", "user-a") == 1
    async with vault.store.engine.connect() as connection:
        after = (await connection.execute(select(credentials.c.secret))).scalar_one()
        key_after = (await connection.execute(select(user_keys.c.wrapped_key))).scalar_one()
    assert before != after and key_before != key_after
    assert (await vault.resolver.resolve("runner", "user-a", created["id"], "c")).secret == SECRETS[
        "login"
    ]


async def test_crypto_shredding_destroys_one_user_and_spares_the_others(vault_parts: Parts):
    vault, admin = vault_parts, vault_parts.admin
    gone = await vault.credentials.create(
        "gateway", "user-a", "k", "api_key", "acme", SECRETS["api_key"]
    )
    kept = await vault.credentials.create(
        "gateway", "user-b", "k", "api_key", "acme", SECRETS["api_key"]
    )
    async with vault.store.engine.connect() as connection:
        backup = (
            await connection.execute(select(credentials).where(credentials.c.id == gone["id"]))
        ).one()
    # Resolved once: the row and its opened data key are cached; shredding must drop both.
    assert (await vault.resolver.resolve("runner", "user-a", gone["id"], "c")).secret == SECRETS[
        "api_key"
    ]
    assert await admin.shred("retention", "user-a") == (True, 1)
    assert vault.sealed.get(("user-a", gone["id"])) is None
    assert await admin.shred("retention", "user-a") == (False, 0)  # idempotent
    with pytest.raises(NotFound):
        await vault.resolver.resolve("runner", "user-a", gone["id"], "c")
    # A backup of the credential row is noise now: put it back, and it still cannot be opened.
    async with vault.store.engine.begin() as connection:
        await connection.execute(credentials.insert().values(**backup._mapping))
    with pytest.raises(Exception) as unreadable:
        await vault.resolver.resolve("runner", "user-a", gone["id"], "c")
    assert getattr(unreadable.value, "reason", "") == "KEY_DESTROYED"
    assert (await vault.resolver.resolve("runner", "user-b", kept["id"], "c")).secret == SECRETS[
        "api_key"
    ]


async def test_the_sealed_row_cache_never_serves_a_change(vault_parts: Parts):
    vault, admin = vault_parts, vault_parts.admin
    assert vault.sealed.enabled  # one machine, no Redis: this process makes every change
    created = await vault.credentials.create(
        "gateway", "user-a", "k", "api_key", "acme", SECRETS["api_key"]
    )
    cid = created["id"]
    await vault.resolver.resolve("runner", "user-a", cid, "c")  # cached now
    new_secret = {"key": "sk_live_changed_secret_000001", "header": "X-Api-Key"}
    await vault.credentials.update("gateway", "user-a", cid, ["secret"], secret=new_secret)
    assert (await vault.resolver.resolve("runner", "user-a", cid, "c")).secret == new_secret
    await admin.begin_rotation()
    await admin.rewrap(batch_size=100)
    await admin.retire("v1")  # cached rows wrapped by v1 must not be served after this
    assert (await vault.resolver.resolve("runner", "user-a", cid, "c")).secret == new_secret
    await admin.rotate_user_key("operator", "user-a")
    assert (await vault.resolver.resolve("runner", "user-a", cid, "c")).secret == new_secret
    await vault.credentials.delete("gateway", "user-a", cid)
    with pytest.raises(NotFound):
        await vault.resolver.resolve("runner", "user-a", cid, "c")
    kept = await vault.credentials.create(
        "gateway", "user-b", "k", "api_key", "acme", SECRETS["api_key"]
    )
    await vault.resolver.resolve("runner", "user-b", kept["id"], "c")
    await admin.shred("retention", "user-b")
    with pytest.raises(NotFound):
        await vault.resolver.resolve("runner", "user-b", kept["id"], "c")


async def test_scaled_out_vaults_do_not_cache(tmp_path: Path):
    from pydantic import SecretStr

    from services.vault.server import build

    settings = vault_settings(tmp_path, f"sqlite:///{tmp_path / 'v.db'}")
    mesh = settings.mesh.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:6379/15")})
    parts = build(settings.model_copy(update={"mesh": mesh}))
    assert not parts.sealed.enabled
    await parts.close()
