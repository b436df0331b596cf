"""Settings every process shares, read once at start-up from the environment into a typed object.

Each service adds its own `Settings` (prefix `IDENTITY_`, `GATEWAY_`, …) holding a `MeshSettings`.
No module reads `os.environ` on its own; `describe()` renders any settings object with its
secrets masked, for `leadmesh config`. List settings are `CommaList` (`a,b` or JSON), and entry
points read settings with `settings_or_exit()`: a setting an operator got wrong is one line on
stderr naming the variable, and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError
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
    # How spans and metrics travel to that endpoint (the OpenTelemetry standard's values).
    otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        "http/protobuf", validation_alias="OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    # OpenTelemetry's own switch: no spans, no metrics, no /metrics endpoint.
    sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    # Where each process serves GET /metrics (plain HTTP on LEADMESH_HOST; 0: a free port). Each
    # runner-worker process takes the first free port from RUNNER_WORKER_METRICS_PORT up.
    gateway_metrics_port: int = Field(9464, ge=0, validation_alias="GATEWAY_METRICS_PORT")
    identity_metrics_port: int = Field(9465, ge=0, validation_alias="IDENTITY_METRICS_PORT")
    vault_metrics_port: int = Field(9466, ge=0, validation_alias="VAULT_METRICS_PORT")
    runner_metrics_port: int = Field(9467, ge=0, validation_alias="RUNNER_METRICS_PORT")
    retention_metrics_port: int = Field(9468, ge=0, validation_alias="RETENTION_METRICS_PORT")
    runner_worker_metrics_port: int = Field(
        9470, ge=0, validation_alias="RUNNER_WORKER_METRICS_PORT"
    )
    # Without an OTLP endpoint, spans go to var/traces/<service>.jsonl: that file is rotated past
    # this size (or once a day), and rotated files older than the days or beyond the count of
    # newest kept per service are deleted.
    traces_max_bytes: int = Field(
        16 * 1024 * 1024, gt=0, validation_alias="LEADMESH_TRACES_MAX_BYTES"
    )
    traces_keep_days: float = Field(7.0, gt=0, validation_alias="LEADMESH_TRACES_KEEP_DAYS")
    traces_keep_files: int = Field(20, ge=1, validation_alias="LEADMESH_TRACES_KEEP_FILES")
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

    def metrics_port(self, process: str) -> int:
        """The metrics port of `process` (gateway, identity, …, runner-worker)."""
        return int(getattr(self, f"{process.replace('-', '_')}_metrics_port"))

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


def _comma_separated(value: Any) -> Any:
    """A list from an environment variable: JSON (`["a", "b"]`) or comma-separated (`a, b`)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError as error:
            raise ValueError(f"not a JSON list ({error})") from None
    return [item.strip() for item in text.split(",") if item.strip()]


# A list setting as operators write it (`10.0.0.0/8,192.0.2.1`), JSON still accepted. NoDecode
# keeps pydantic-settings from insisting on JSON before the validator sees the text.
CommaSeparated = BeforeValidator(_comma_separated)
CommaList = Annotated[list[str], NoDecode, CommaSeparated]

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class InvalidSettings(Exception):
    """A setting that cannot be used; the message is one line naming each variable at fault."""


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """The settings from the environment, or InvalidSettings saying which variable is wrong."""
    try:
        return settings_class()
    except ValidationError as error:
        raise InvalidSettings(_explain(settings_class, error)) from None
    except SettingsError as error:
        raise InvalidSettings(_explain_undecodable(settings_class, error)) from None


def settings_or_exit(settings_class: type[SettingsT]) -> SettingsT:
    """For entry points: an invalid setting ends the process with one line and status 2."""
    try:
        return load_settings(settings_class)
    except InvalidSettings as error:
        report_invalid(error)
        raise SystemExit(2) from None


def report_invalid(error: InvalidSettings) -> None:
    line = str(error).replace("\n", " ")  # one line, whatever a validator's message holds
    sys.stderr.write(f"leadmesh: {line}\n")
    sys.stderr.flush()


def env_names(settings_class: type[BaseSettings]) -> dict[str, str]:
    """{field name or alias: the variable it is read from}, for the class and nested settings."""
    names: dict[str, str] = {}
    for name in settings_class.model_fields:
        env = _env_of(settings_class, name)
        names[name] = names[env] = env
    return names


def _env_of(settings_class: type[BaseSettings], name: str) -> str:
    alias = settings_class.model_fields[name].validation_alias
    prefix = settings_class.model_config.get("env_prefix", "")
    return _env_name(alias) or (prefix + name).upper()


def _nested_classes(settings_class: type[BaseSettings]) -> dict[str, type[BaseSettings]]:
    classes = {settings_class.__name__: settings_class}
    for field in settings_class.model_fields.values():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            classes.update(_nested_classes(kind))
    return classes


def _explain(settings_class: type[BaseSettings], error: ValidationError) -> str:
    # A nested MeshSettings fails inside its default factory: its own class names the error.
    owner = _nested_classes(settings_class).get(error.title, settings_class)
    names = env_names(owner)
    problems = []
    for item in error.errors():
        message = item["msg"].replace("Value error, ", "")
        if not item["loc"]:  # a check across fields: its message names the variables
            problems.append(message)
            continue
        first, *rest = item["loc"]
        env = names.get(str(first), str(first).upper())
        where = env + "".join(f"[{part}]" for part in rest)
        if _is_secret(owner, env) and isinstance(item.get("input"), str) and item["input"]:
            message = message.replace(item["input"], "***")  # a secret is never echoed
        problems.append(f"{where}: {message}")
    return "invalid setting " + "; ".join(problems)


def _explain_undecodable(settings_class: type[BaseSettings], error: SettingsError) -> str:
    match = re.search(r'field "([^"]+)"', str(error))
    field = match.group(1) if match else "?"
    names: dict[str, str] = {}
    for owner in reversed(_nested_classes(settings_class).values()):
        names.update(env_names(owner))  # the outer class's own fields win
    cause = f" ({error.__cause__})" if isinstance(error.__cause__, ValueError) else ""
    return f"invalid setting {names.get(field, field.upper())}: not valid JSON{cause}"


def _is_secret(owner: type[BaseSettings], env: str) -> bool:
    fields = [f for name, f in owner.model_fields.items() if _env_of(owner, name) == env]
    annotation = str(fields[0].annotation) if fields else ""
    return "SecretStr" in annotation or any(word in env.lower() for word in _SECRET_WORDS)
