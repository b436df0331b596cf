"""The vault's cache of sealed rows: a change empties what it may have made stale, and a read
that raced a change is never kept."""

from __future__ import annotations

from services.vault.sealcache import SealedRows


def test_forgetting_some_users_keeps_the_others_rows():
    cache = SealedRows()
    for user in ("ann", "bob"):
        cache.put((user, "c1"), {"user": user}, cache.epoch)
    cache.forget(users=["ann"])
    assert cache.get(("ann", "c1")) is None
    assert cache.get(("bob", "c1")) == {"user": "bob"}
    cache.forget()
    assert cache.get(("bob", "c1")) is None


def test_a_read_begun_before_a_change_is_not_kept():
    cache = SealedRows()
    epoch = cache.epoch  # a read starts…
    cache.forget(users=["someone else"])  # …a rewrap commits meanwhile…
    cache.put(("ann", "c1"), {"stale": True}, epoch)  # …and the read's row arrives
    assert cache.get(("ann", "c1")) is None


def test_rows_handed_out_are_copies_and_nothing_is_kept_when_disabled():
    cache = SealedRows()
    cache.put(("ann", "c1"), {"n": 1}, cache.epoch)
    cache.get(("ann", "c1"))["n"] = 2  # type: ignore[index]
    assert cache.get(("ann", "c1")) == {"n": 1}
    off = SealedRows(enabled=False)
    off.put(("ann", "c1"), {"n": 1}, off.epoch)
    assert off.get(("ann", "c1")) is None
