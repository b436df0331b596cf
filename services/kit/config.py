"""Settings every process shares, read once at start-up from the environment into a typed object.

Each service adds its own `Settings` (prefix `IDENTITY_`, `GATEWAY_`, …) holding a `MeshSettings`.
No module reads `os.environ` on its own; `describe()` renders any settings object with its
secrets masked, for `leadmesh config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

SERVICES = ("identity", "vault", "runner", "retention")
DEFAULT_PORTS = {"identity": 50051, "vault": 50052, "runner": 50053, "retention": 50054}


class MeshSettings(BaseSettings):
    """Where var/ is, where each service listens, and how internal traffic is secured."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    var_dir: Path = Field(Path("var"), validation_alias="LEADMESH_VAR_DIR")
    # Address services bind to and clients dial by default (one machine).
    host: str = Field("127.0.0.1", validation_alias="LEADMESH_HOST")
    # Plaintext gRPC between services; only when set explicitly, never by default.
    insecure_internal: bool = Field(False, validation_alias="LEADMESH_INSECURE_INTERNAL")
    # Operators may run the mesh ahead of wall time (rehearsing retention, lockout ends).
    clock_offset_seconds: float = Field(0.0, validation_alias="LEADMESH_CLOCK_OFFSET_SECONDS")
    # The gateway's HTTPS port, which the default public URL names.
    gateway_https_port: int = Field(8443, validation_alias="GATEWAY_HTTPS_PORT")
    # Where people reach the gateway (default https://localhost:<GATEWAY_HTTPS_PORT>), and the
    # frontend that links in e-mails point at (default: the public URL).
    public_url: str = Field(None, validation_alias="LEADMESH_PUBLIC_URL", validate_default=True)
    frontend_url: str = Field(None, validation_alias="LEADMESH_FRONTEND_URL", validate_default=True)
    redis_url: SecretStr | None = Field(None, validation_alias="REDIS_URL")
    log_level: str = Field("INFO", validation_alias="LEADMESH_LOG_LEVEL")
    otlp_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # Default deadline of an internal call, in seconds.
    rpc_timeout: float = Field(10.0, validation_alias="LEADMESH_RPC_TIMEOUT")

    identity_port: int = Field(DEFAULT_PORTS["identity"], validation_alias="IDENTITY_PORT")
    vault_port: int = Field(DEFAULT_PORTS["vault"], validation_alias="VAULT_PORT")
    runner_port: int = Field(DEFAULT_PORTS["runner"], validation_alias="RUNNER_PORT")
    retention_port: int = Field(DEFAULT_PORTS["retention"], validation_alias="RETENTION_PORT")
    # host:port a client dials; defaults to LEADMESH_HOST and the service's port.
    identity_addr: str | None = Field(None, validation_alias="IDENTITY_ADDR")
    vault_addr: str | None = Field(None, validation_alias="VAULT_ADDR")
    runner_addr: str | None = Field(None, validation_alias="RUNNER_ADDR")
    retention_addr: str | None = Field(None, validation_alias="RETENTION_ADDR")

    @field_validator("public_url", mode="before")
    @classmethod
    def _default_public_url(cls, value: str | None, info: ValidationInfo) -> str:
        return value or f"https://localhost:{info.data.get('gateway_https_port', 8443)}"

    @field_validator("frontend_url", mode="before")
    @classmethod
    def _default_frontend_url(cls, value: str | None, info: ValidationInfo) -> str:
        return value or info.data.get("public_url") or "https://localhost:8443"

    @property
    def pki_dir(self) -> Path:
        return self.var_dir / "pki"

    def port(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def addr(self, service: str) -> str:
        return getattr(self, f"{service}_addr") or f"{self.host}:{self.port(service)}"

    def redis(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None


def database_url(configured: SecretStr | None, mesh: MeshSettings, service: str) -> str:
    """The service's SQLAlchemy URL: its `*_DATABASE_URL`, else a SQLite file under var/."""
    if configured is not None:
        return configured.get_secret_value()
    return f"sqlite:///{(mesh.var_dir / service / f'{service}.db').resolve()}"


_SECRET_WORDS = ("secret", "password", "token", "key")


def describe(settings: BaseSettings, prefix: str = "") -> dict[str, Any]:
    """A flat {ENV_NAME: value} view with every secret masked and URL passwords hidden."""
    out: dict[str, Any] = {}
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        env = _env_name(field.validation_alias)
        env = env or (settings.model_config.get("env_prefix", "") + name).upper()
        if isinstance(value, BaseSettings):
            out.update(describe(value))
            continue
        out[env] = _mask(env, value)
    return out


def _env_name(alias: Any) -> str | None:
    """The variable a field reads: its alias, or the first of its alias choices."""
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return next((c for c in alias.choices if isinstance(c, str)), None)
    return None


def _mask(env: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        return _hide_url_password(raw) if "://" in raw else "********"
    if isinstance(value, str) and "://" in value:
        return _hide_url_password(value)
    if any(word in env.lower() for word in _SECRET_WORDS) and isinstance(value, str) and value:
        return "********"
    if isinstance(value, (dict, list, tuple, BaseModel)):
        return to_jsonable_python(value)  # e.g. identity's plans: plain JSON to print
    return str(value) if isinstance(value, Path) else value


def _hide_url_password(raw: str) -> str:
    """The URL with its password, and any query parameter named like a secret, masked."""
    try:
        url = make_url(raw)
    except Exception:  # not an RFC-1738 URL: mask it whole rather than risk a secret
        return "********"
    query = {
        key: "***" if any(word in key.lower() for word in _SECRET_WORDS) else value
        for key, value in url.query.items()
    }
    return url.set(query=query).render_as_string(hide_password=True)
