"""The runner's persistence: one transaction (`Store.begin()`/`read()` → `Tx`) shared by a
repository per aggregate (`tx.connections`, `tx.runs`, `tx.attempts`, `tx.webhook_log`,
`tx.notifications`, `tx.failure_mails`, `tx.idempotency_keys`, `tx.signatures`).

This package is the only part of the runner that writes SQL, except the savepoints callers open
on `tx.c` to make several repositories' writes all-or-nothing.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import RowTx
from services.kit.db import Store as KitStore
from services.runner.store import remembered
from services.runner.store.attempts import Attempts
from services.runner.store.connections import Connections
from services.runner.store.failure_mails import FailureMails
from services.runner.store.notifications import Notifications
from services.runner.store.runs import Runs
from services.runner.store.webhook_log import WebhookLog


class Tx(RowTx):
    def __init__(self, connection: AsyncConnection) -> None:
        super().__init__(connection)
        self.connections = Connections(connection)
        self.runs = Runs(connection)
        self.attempts = Attempts(connection)
        self.webhook_log = WebhookLog(connection)
        self.notifications = Notifications(connection)
        self.failure_mails = FailureMails(connection)
        self.idempotency_keys = remembered.idempotency(connection)
        self.signatures = remembered.signatures(connection)


class Store(KitStore[Tx]):
    tx_class = Tx
