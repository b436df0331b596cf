"""Retention's settings (`RETENTION_*`), read once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.kit.config import CommaList, MeshSettings


class RetentionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETENTION_", extra="ignore", frozen=True)

    mesh: MeshSettings = Field(default_factory=MeshSettings)
    database_url: SecretStr | None = None
    # The services whose categories retention enforces, dialled at their mesh address; retention
    # is always one too (in-process).
    participants: CommaList = ["identity", "vault", "runner"]
    # Each category's purge runs this often; a row older than its max age plus this is LATE.
    purge_interval_seconds: Annotated[float, Field(gt=0)] = 3600.0
    # Most rows per purge batch, one short transaction each (SQLite participants size their
    # batches to about 50 ms of writing, up to this; PostgreSQL's writers never wait for one).
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 10_000
    # How often the participants' categories are listed again (a participant that was down at
    # start gets its jobs once it answers).
    discover_seconds: Annotated[float, Field(gt=0)] = 60.0
    # The sealing migration (rows written before sealing existed) runs at start and this often;
    # once all is sealed a run finds nothing. 0: only when an operator runs `retention seal`.
    sealing_interval_seconds: Annotated[float, Field(ge=0)] = 3600.0
    # Most rows a participant seals per batch of the migration (one transaction each).
    seal_batch_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # How often identity's deletion requests are read and due erasure cases executed.
    erasure_reconcile_seconds: Annotated[float, Field(gt=0)] = 30.0
    # An open case this close to its deadline (or past it) is flagged at risk.
    at_risk_days: Annotated[int, Field(ge=0)] = 7
    # A purge's lease (one purge of a category at a time across replicas) lasts this long and is
    # renewed while the purge runs; a crashed holder's lease ends after it.
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    # The key of the subjects' pseudonymous references (HMAC-SHA256 of the user id). Unset:
    # generated once under var/retention/ (one machine; production supplies its own).
    subject_key: SecretStr | None = None
    # Categories of retention's own (DESIGN: purge ledger 1 year, certificates 3 years, traces 7).
    ledger_days: Annotated[int, Field(ge=1)] = 365
    certificate_days: Annotated[int, Field(ge=1)] = 3 * 365
    traces_days: Annotated[int, Field(ge=1)] = 7

    @property
    def var_dir(self) -> Path:
        return self.mesh.var_dir / "retention"
