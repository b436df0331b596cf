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


def test_the_kept_entry_is_handed_out_and_nothing_is_kept_when_disabled():
    cache: SealedRows[tuple[int]] = SealedRows()
    entry = (1,)
    cache.put(("ann", "c1"), entry, cache.epoch)
    assert cache.get(("ann", "c1")) is entry  # entries are immutable: no copy is made
    off: SealedRows[tuple[int]] = SealedRows(enabled=False)
    off.put(("ann", "c1"), entry, off.epoch)
    assert off.get(("ann", "c1")) is None


def test_the_least_recently_used_entry_goes_first():
    cache: SealedRows[str] = SealedRows(capacity=2)
    cache.put(("ann", "c1"), "a", cache.epoch)
    cache.put(("bob", "c1"), "b", cache.epoch)
    assert cache.get(("ann", "c1")) == "a"  # used: bob's is now the oldest
    cache.put(("cy", "c1"), "c", cache.epoch)
    assert cache.get(("bob", "c1")) is None
    assert cache.get(("ann", "c1")) == "a" and cache.get(("cy", "c1")) == "c"
