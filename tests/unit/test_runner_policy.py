"""The attempt's policy, without a worker: what each answer or failure decides for a run."""

from __future__ import annotations

from services.runner import policy

BACKOFF = policy.Backoff(base_seconds=1.0, cap_seconds=8.0)


def highest(low: float, high: float) -> float:
    return high


def test_a_2xx_ends_the_run_succeeded() -> None:
    decision = policy.after_response(
        204, refresh=False, retry_after=None, used=1, max_attempts=3, backoff=BACKOFF
    )
    assert decision == policy.Finish("succeeded")


def test_a_5xx_is_retried_until_the_maximum_then_fails_saying_how_often() -> None:
    again = policy.after_response(
        503, refresh=False, retry_after=None, used=1, max_attempts=2, backoff=BACKOFF
    )
    last = policy.after_response(
        503, refresh=False, retry_after=None, used=2, max_attempts=2, backoff=BACKOFF
    )
    assert isinstance(again, policy.Later) and again.charged
    assert last == policy.Finish("failed", "HTTP 503 (after 2 attempts)")


def test_retry_after_is_honoured_up_to_an_hour() -> None:
    assert BACKOFF.delay(1, retry_after=120.0, jitter=highest) == 120.0
    assert BACKOFF.delay(1, retry_after=86_400.0, jitter=highest) == 3600.0


def test_backoff_doubles_per_attempt_up_to_its_cap() -> None:
    assert [BACKOFF.delay(used, jitter=highest) for used in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]


def test_a_401_with_an_oauth2_credential_is_refreshed_once_with_an_attempt_left() -> None:
    assert policy.may_refresh("oauth2", refreshed=False, number=1, max_attempts=3)
    assert not policy.may_refresh("oauth2", refreshed=True, number=1, max_attempts=3)
    assert not policy.may_refresh("oauth2", refreshed=False, number=3, max_attempts=3)
    assert not policy.may_refresh("api_key", refreshed=False, number=1, max_attempts=3)
    decision = policy.after_response(
        401, refresh=True, retry_after=None, used=1, max_attempts=3, backoff=BACKOFF
    )
    assert decision == policy.Refresh()


def test_a_4xx_fails_at_once() -> None:
    decision = policy.after_response(
        404, refresh=False, retry_after=None, used=1, max_attempts=5, backoff=BACKOFF
    )
    assert decision == policy.Finish("failed", "HTTP 404")


def test_only_an_unresolvable_name_among_refusals_is_retried() -> None:
    assert isinstance(policy.after_refusal("UNRESOLVABLE", "x", 1, 3, BACKOFF), policy.Later)
    assert policy.after_refusal("ADDRESS_REFUSED", "x", 1, 3, BACKOFF) == policy.Finish(
        "failed", "x"
    )


def test_a_paused_connection_holds_its_run_without_an_attempt() -> None:
    reason, decision = policy.before_sending(False, "paused") or ("", None)
    assert reason == "connection_paused"
    assert isinstance(decision, policy.Later) and not decision.charged
    assert policy.before_sending(False, "active") is None


def test_an_outage_holds_a_run_only_for_the_hold_time() -> None:
    assert policy.hold_for_outage(10.0, 60.0, "vault down") is not None
    assert policy.hold_for_outage(61.0, 60.0, "vault down") is None
