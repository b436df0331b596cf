"""Identity's use cases on a real SQLite file and a real PostgreSQL, time moved by hand."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import select

from services.identity.billing import PlanChange
from services.identity.passwords import encode_hash, parse_hash
from services.identity.server import Parts
from services.identity.tables import accounting_records, accounts, sessions
from services.kit.clock import SettableClock
from services.kit.errors import (
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from tests.integration.identity_support import PASSWORD

IP, UA = "198.51.100.7", "test-agent/1.0"


async def signup(parts: Parts, email: str = "ann@example.com"):
    return await parts.accounts.create_account(email, PASSWORD)


async def test_signup_stores_only_a_pbkdf2_hash_and_refuses_a_taken_address(parts: Parts):
    account = await signup(parts, "Ann@Example.COM")
    assert account.email == "Ann@example.com" and account.plan == "free"
    parsed = parse_hash(account.password_hash)
    assert parsed.iterations == 210_000 and len(parsed.salt) == 16
    with pytest.raises(AlreadyExists) as taken:
        await signup(parts, "ann@example.com")
    assert taken.value.reason == "EMAIL_TAKEN"
    with pytest.raises(InvalidArgument) as invalid:
        await parts.accounts.create_account("not-an-address", PASSWORD)
    assert invalid.value.reason == "INVALID_EMAIL"


async def test_each_login_opens_a_new_session_whose_token_is_stored_only_as_a_hash(
    parts: Parts,
):
    await signup(parts)
    first = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    second = await parts.sessions.login("ANN@example.com", PASSWORD, IP, UA)
    assert first.token != second.token and len(first.token) >= 43
    async with parts.store.engine.connect() as connection:
        stored = (await connection.execute(select(sessions.c.token_hash))).scalars().all()
    assert first.token not in stored and len(stored) == 2
    assert (await parts.sessions.authenticate(first.token)).id == first.session.id


async def test_sessions_roll_with_use_and_end_at_their_absolute_lifetime(
    parts: Parts, clock: SettableClock
):
    await signup(parts)
    signed = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    start = clock.now()
    for _ in range(4):  # used every 6 days: the 7-day idle deadline keeps moving
        clock.advance(days=6)
        session = await parts.sessions.authenticate(signed.token)
        assert session.expire_time == min(
            clock.now() + timedelta(days=7), start + timedelta(days=30)
        )
    clock.advance(days=6, seconds=1)  # day 30 and a second: past the absolute lifetime
    with pytest.raises(Unauthenticated) as ended:
        await parts.sessions.authenticate(signed.token)
    assert ended.value.reason == "SESSION_INVALID"


async def test_an_idle_session_ends_after_seven_days(parts: Parts, clock: SettableClock):
    await signup(parts)
    signed = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    clock.advance(days=7, seconds=1)
    with pytest.raises(Unauthenticated):
        await parts.sessions.authenticate(signed.token)


async def test_unknown_email_and_wrong_password_are_the_same_answer(parts: Parts):
    await signup(parts)
    errors = []
    for email, password in (
        ("ann@example.com", "wrong password!"),
        ("nobody@example.com", PASSWORD),
    ):
        with pytest.raises(Unauthenticated) as refused:
            await parts.sessions.login(email, password, IP, UA)
        errors.append((refused.value.reason, refused.value.message))
    assert errors[0] == errors[1] == ("INVALID_CREDENTIALS", errors[0][1])


async def test_lockout_records_throttled_attempts_and_spares_other_addresses(parts: Parts):
    account = await signup(parts)
    for _ in range(10):
        with pytest.raises(Unauthenticated):
            await parts.sessions.login("ann@example.com", "wrong password!", IP, UA)
    with pytest.raises(ResourceExhausted) as held:
        await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    assert held.value.reason == "LOGIN_THROTTLED" and 0 < held.value.retry_after <= 900
    await parts.sessions.login("ann@example.com", PASSWORD, "198.51.100.8", UA)
    attempts, _ = await parts.sessions.login_attempts(account.id, 100, "")
    outcomes = [a.outcome for a in attempts]
    assert outcomes[:2] == ["success", "throttled"] and outcomes.count("bad_password") == 10


async def test_an_old_hash_is_rehashed_at_the_next_login(parts: Parts):
    account = await signup(parts)
    async with parts.store.begin() as tx:
        await tx.update_account(account.id, password_hash=encode_hash(PASSWORD, 200_000))
    await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    assert (
        parse_hash((await parts.accounts.account(account.id)).password_hash).iterations == 210_000
    )


async def test_login_history_pages_newest_first(parts: Parts, clock: SettableClock):
    account = await signup(parts)
    for n in range(5):
        clock.advance(1)
        await parts.sessions.login("ann@example.com", PASSWORD, f"198.51.100.{n}", UA)
    page, token = await parts.sessions.login_attempts(account.id, 2, "")
    assert [a.ip_address for a in page] == ["198.51.100.4", "198.51.100.3"] and token
    page, token = await parts.sessions.login_attempts(account.id, 2, token)
    assert [a.ip_address for a in page] == ["198.51.100.2", "198.51.100.1"]
    page, token = await parts.sessions.login_attempts(account.id, 2, token)
    assert len(page) == 1 and token == ""
    with pytest.raises(InvalidArgument):
        await parts.sessions.login_attempts(account.id, 2, "forged")


def _reset_token(outbox: Path) -> str:
    import re

    newest = max(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    message = message_from_bytes(newest.read_bytes(), policy=policy.default)
    assert oct(newest.stat().st_mode & 0o777) == "0o600"
    return re.search(r"token=([A-Za-z0-9_\-]+)", message.get_content()).group(1)


async def test_password_reset_is_single_use_expires_and_revokes_every_session(
    parts: Parts, clock: SettableClock
):
    await signup(parts)
    signed = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    await parts.password_reset.request_password_reset("ann@example.com")
    await parts.password_reset.drain()
    token = _reset_token(parts.settings.outbox_dir)
    with pytest.raises(InvalidArgument) as weak:  # the rules hold, and the token is not spent
        await parts.password_reset.confirm_password_reset(token, "password123")
    assert weak.value.reason == "PASSWORD_TOO_COMMON"
    await parts.password_reset.confirm_password_reset(token, "a brand new passphrase")
    with pytest.raises(Unauthenticated):
        await parts.sessions.authenticate(signed.token)
    with pytest.raises(InvalidArgument) as reused:
        await parts.password_reset.confirm_password_reset(token, "another new passphrase")
    assert reused.value.reason == "RESET_TOKEN_INVALID"
    await parts.sessions.login("ann@example.com", "a brand new passphrase", IP, UA)

    await parts.password_reset.request_password_reset("ann@example.com")
    await parts.password_reset.drain()
    late = _reset_token(parts.settings.outbox_dir)
    clock.advance(3601)
    with pytest.raises(InvalidArgument):
        await parts.password_reset.confirm_password_reset(late, "yet another passphrase")


async def test_a_reset_for_an_unknown_address_sends_nothing(parts: Parts):
    await parts.password_reset.request_password_reset("nobody@example.com")
    await parts.password_reset.drain()
    assert not list(parts.settings.outbox_dir.glob("*.eml"))


async def test_concurrent_confirmations_spend_a_token_once(parts: Parts):
    await signup(parts)
    await parts.password_reset.request_password_reset("ann@example.com")
    await parts.password_reset.drain()
    token = _reset_token(parts.settings.outbox_dir)
    results = await asyncio.gather(
        *(
            parts.password_reset.confirm_password_reset(token, f"new passphrase {n}")
            for n in range(4)
        ),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, InvalidArgument) for r in results if r is not None)


async def test_password_change_revokes_every_session_and_opens_one(parts: Parts):
    account = await signup(parts)
    other = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    with pytest.raises(Unauthenticated):
        await parts.password_change.change_password(
            account.id, "not it at all", "fresh passphrase", IP, UA
        )
    signed = await parts.password_change.change_password(
        account.id, PASSWORD, "fresh passphrase", IP, UA
    )
    with pytest.raises(Unauthenticated):
        await parts.sessions.authenticate(other.token)
    assert (await parts.sessions.authenticate(signed.token)).account_id == account.id
    assert [s.id for s in await parts.sessions.sessions(account.id)] == [signed.session.id]


async def test_end_other_sessions_keeps_the_current_one(parts: Parts):
    account = await signup(parts)
    keep = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    await parts.sessions.login("ann@example.com", PASSWORD, "198.51.100.9", UA)
    await parts.sessions.login("ann@example.com", PASSWORD, "198.51.100.10", UA)
    assert await parts.sessions.revoke_other_sessions(account.id, keep.session.id) == 2
    assert [s.id for s in await parts.sessions.sessions(account.id)] == [keep.session.id]


async def test_deletion_needs_the_password_disables_and_revokes(parts: Parts, clock: SettableClock):
    account = await signup(parts)
    signed = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    with pytest.raises(Unauthenticated):
        await parts.deletion.request_deletion(account.id, "not my password")
    requested, deadline = await parts.deletion.request_deletion(account.id, PASSWORD)
    assert requested == clock.now() and deadline - requested == timedelta(days=60)
    with pytest.raises(Unauthenticated):
        await parts.sessions.authenticate(signed.token)
    with pytest.raises(PermissionDenied) as disabled:
        await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    assert disabled.value.reason == "ACCOUNT_DISABLED"
    async with parts.store.engine.connect() as connection:
        row = (await connection.execute(select(accounts).where(accounts.c.id == account.id))).one()
    assert row.status == "disabled" and row.deletion_request_time is not None


async def test_an_upgrade_writes_an_accounting_record(parts: Parts):
    account = await signup(parts)
    change = PlanChange(
        plan="pro",
        billing_name="Ann Example",
        billing_address={
            "line1": "1 Main St",
            "city": "Berlin",
            "postal_code": "10115",
            "country": "de",
        },
        payment_reference="pi_3NxYzAbc",
    )
    upgraded = await parts.billing.change_plan(account.id, change)
    assert upgraded.plan == "pro" and upgraded.billing_address["country"] == "DE"
    async with parts.store.engine.connect() as connection:
        record = (await connection.execute(select(accounting_records))).one()
    assert (record.plan, record.amount, record.currency) == ("pro", 2900, "EUR")
    assert record.payment_reference == "pi_3NxYzAbc" and record.account_id == account.id


async def test_consents_have_history_and_unsubscribe_works_twice(
    parts: Parts, clock: SettableClock
):
    account = await signup(parts)
    consents = {c.purpose: c for c in await parts.consents.get(account.id)}
    assert consents["execution_notifications"].granted
    assert [e.source for e in consents["execution_notifications"].history] == ["signup"]
    assert not consents["new_features"].granted and not consents["new_features"].history
    clock.advance(1)
    await parts.consents.update(account.id, [("new_features", True), ("business_matters", False)])
    token = parts.consents.unsubscribe_token(account.id, "new_features")
    assert await parts.consents.unsubscribe(token) == "new_features"
    assert await parts.consents.unsubscribe(token) == "new_features"
    history = {c.purpose: c for c in await parts.consents.get(account.id)}["new_features"].history
    assert [(e.granted, e.source) for e in history] == [(True, "settings"), (False, "unsubscribe")]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(InvalidArgument) as refused:
        await parts.consents.unsubscribe(forged)
    assert refused.value.reason == "UNSUBSCRIBE_TOKEN_INVALID"


async def test_announcements_reach_only_consenting_active_accounts(parts: Parts):
    ann, bob = await signup(parts, "ann@example.com"), await signup(parts, "bob@example.com")
    carl = await signup(parts, "carl@example.com")
    for account in (ann, bob, carl):
        await parts.consents.update(account.id, [("new_features", True)])
    await parts.consents.update(bob.id, [("new_features", False)])
    await parts.deletion.request_deletion(carl.id, PASSWORD)
    await parts.deletion.drain()
    for confirmation in parts.settings.outbox_dir.glob("*.eml"):  # carl's deletion mail
        confirmation.unlink()
    assert await parts.consents.announce("new_features", "News", "Something new.") == 1
    (mail,) = parts.settings.outbox_dir.glob("*.eml")
    message = message_from_bytes(mail.read_bytes(), policy=policy.default)
    assert message["To"] == "ann@example.com"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<https://localhost:8443/v1/unsubscribe?token=")


async def test_execution_notices_reach_only_consenting_owners(parts: Parts):
    ann, bob = await signup(parts, "ann@example.com"), await signup(parts, "bob@example.com")
    # Execution notifications are granted at sign-up; Bob withdraws his.
    await parts.consents.update(bob.id, [("execution_notifications", False)])
    assert await parts.consents.notify(ann.id, "A run failed", "HTTP 500 after 5 attempts")
    assert not await parts.consents.notify(bob.id, "A run failed", "HTTP 500")
    assert not await parts.consents.notify("no-such-account", "A run failed", "HTTP 500")
    (mail,) = parts.settings.outbox_dir.glob("*.eml")
    message = message_from_bytes(mail.read_bytes(), policy=policy.default)
    assert message["To"] == "ann@example.com" and message["Subject"] == "A run failed"
    assert "HTTP 500 after 5 attempts" in message.get_content()
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_parallel_guesses_are_held_at_the_limit(parts: Parts):
    await signup(parts)
    outcomes = await asyncio.gather(
        *(parts.sessions.login("ann@example.com", "wrong password!", IP, UA) for _ in range(30)),
        return_exceptions=True,
    )
    reasons = [getattr(o, "reason", "") for o in outcomes]
    assert reasons.count("INVALID_CREDENTIALS") == 10
    assert reasons.count("LOGIN_THROTTLED") == 20


async def test_a_login_racing_a_deletion_request_leaves_no_live_session(parts: Parts):
    for round_ in range(4):  # the deletion lands at different moments of the login's hashing
        account = await signup(parts, f"race{round_}@example.com")
        login = asyncio.ensure_future(
            parts.sessions.login(f"race{round_}@example.com", PASSWORD, IP, UA)
        )
        await asyncio.sleep(0.03 * round_)
        await parts.deletion.request_deletion(account.id, PASSWORD, IP)
        outcome = (await asyncio.gather(login, return_exceptions=True))[0]
        assert await parts.sessions.sessions(account.id) == []
        if not isinstance(outcome, Exception):
            with pytest.raises(Unauthenticated):
                await parts.sessions.authenticate(outcome.token)
        else:
            assert isinstance(outcome, PermissionDenied)


async def test_a_session_of_a_disabled_account_is_refused(parts: Parts):
    account = await signup(parts)
    signed = await parts.sessions.login("ann@example.com", PASSWORD, IP, UA)
    async with parts.store.begin() as tx:  # disabled without revoking: belt and braces
        await tx.update_account(account.id, status="disabled")
    with pytest.raises(Unauthenticated):
        await parts.sessions.authenticate(signed.token)


async def test_page_tokens_out_of_range_are_refused_not_crashing(parts: Parts):
    import base64

    account = await signup(parts)
    huge = base64.urlsafe_b64encode(b"before:99999999999999999999999").decode()
    with pytest.raises(InvalidArgument):
        await parts.sessions.login_attempts(account.id, 10, huge)


async def test_control_characters_are_not_an_email_address(parts: Parts):
    for address in ("ann\x00@example.com", "ann@exa\nmple.com"):
        with pytest.raises(InvalidArgument):
            await parts.accounts.create_account(address, PASSWORD)
        await parts.password_reset.request_password_reset("x@example.com")
    with pytest.raises(Unauthenticated):
        await parts.sessions.login("ann\x00@example.com", PASSWORD, IP, UA)
