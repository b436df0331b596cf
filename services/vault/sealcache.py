"""Sealed rows kept in memory so a resolve need not read the database each time.

What the database holds is kept — ciphertext and the wrapped data key — and, beside it, the opened
data key's cipher, never a plaintext secret. That key adds nothing to what this process's memory
already yields: the KEKs that unwrap every data key are loaded here anyway, and a key is only
of use with the ciphertext of the database. Crypto-shredding destroys the wrapped copy and empties
the cache (as every change does), so no opened key outlives it here.
It is exact only while this process makes every change, which is the single-machine mode (no
REDIS_URL: one vault process; the operator's commands reach it by RPC). Scaled out, replicas do
not cache until invalidations travel between them. Any change empties the cache and moves its
epoch, so a read that raced a change is not stored.

Entries are immutable (frozen, read-only mappings): the one kept is the one handed out, uncopied.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from typing import Generic, TypeVar

Key = tuple[str, str]  # (user id, credential id)
EntryT = TypeVar("EntryT")


class SealedRows(Generic[EntryT]):
    def __init__(self, capacity: int = 10_000, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._capacity = capacity
        self._rows: OrderedDict[Key, EntryT] = OrderedDict()
        self.epoch = 0

    def get(self, key: Key) -> EntryT | None:
        row = self._rows.get(key) if self.enabled else None
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: Key, row: EntryT, epoch: int) -> None:
        """Keeps an entry read at `epoch`, unless something changed since."""
        if not self.enabled or epoch != self.epoch:
            return
        self._rows[key] = row
        if len(self._rows) > self._capacity:
            self._rows.popitem(last=False)

    def forget(self, users: Collection[str] | None = None) -> None:
        """Something changed: every row may be stale, or only those of `users` (a rewrap of
        their data keys). Either way the epoch moves, so no read that raced it is kept."""
        self.epoch += 1
        if users is None:
            self._rows.clear()
            return
        users = set(users)
        for key in [key for key in self._rows if key[0] in users]:
            del self._rows[key]
