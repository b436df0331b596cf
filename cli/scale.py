"""`leadmesh up --profile scale`: the mesh as it runs scaled out, on one machine. Every service
keeps its data in a PostgreSQL database of its own on the server `LEADMESH_POSTGRES_URL` names
(`<LEADMESH_DATABASE_PREFIX><service>`, created when missing, then migrated as always), counters,
locks and the runner's queue live in Redis (`REDIS_URL`), and delivery is done by
`LEADMESH_RUNNER_WORKER_PROCESSES` `runner-worker` processes (the runner itself runs
`RUNNER_WORKERS=0`). A service whose `<NAME>_DATABASE_URL` is set keeps that database (it must be
PostgreSQL and exist).

Both stores are checked before anything is prepared or started: a missing or unreachable one is
one line naming its setting (InvalidSettings: exit status 2). Connection errors are reported by
their first line only, and addresses as host:port: never a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

from cli.mesh import PROCESSES, Process, runner_worker_processes
from services.kit.config import InvalidSettings, MeshSettings

CONNECT_TIMEOUT_SECONDS = 5


class ScaleSettings(BaseSettings):
    """What `--profile scale` needs beyond every process's own settings (and REDIS_URL)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # A PostgreSQL server; its database (default `postgres`) is where the services' are created.
    postgres_url: SecretStr | None = Field(None, validation_alias="LEADMESH_POSTGRES_URL")
    # Each service's database is this followed by its name (leadmesh_identity, …).
    database_prefix: str = Field(
        "leadmesh_", pattern=r"^[a-z_][a-z0-9_]{0,40}$", validation_alias="LEADMESH_DATABASE_PREFIX"
    )
    runner_worker_processes: int = Field(
        2, ge=1, le=32, validation_alias="LEADMESH_RUNNER_WORKER_PROCESSES"
    )


@dataclass
class ScalePlan:
    """What `up` starts with: settings for every process, the processes, banner lines."""

    environment: dict[str, str]
    processes: tuple[Process, ...]
    stores: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Databases:
    """Each service's database under the profile, from the settings alone (nothing dialled):
    `explicit` the operator's own `<NAME>_DATABASE_URL`s, `derived` those made on
    LEADMESH_POSTGRES_URL's server ({variable: URL with its password})."""

    explicit: dict[str, str]
    derived: dict[str, str]

    def environment(self) -> dict[str, str]:
        """What every process `up --profile scale` starts reads beside its own settings."""
        return {"RUNNER_WORKERS": "0", **self.derived}


def service_databases(settings: ScaleSettings, mesh: MeshSettings) -> Databases:
    """Where each service's data would live; InvalidSettings names what is missing or wrong (a
    store that is set but unreachable is `plan`'s to find: this dials nothing)."""
    explicit: dict[str, str] = {}
    derived: dict[str, str] = {}  # variable: the database's name, until the server is known
    problems: list[str] = []
    for process in PROCESSES:
        if process.migrations is None:
            continue
        configured = getattr(process.settings(), "database_url", None)
        variable = f"{process.name.upper()}_DATABASE_URL"
        if configured is None:
            derived[variable] = settings.database_prefix + process.name
        elif not _is_postgres(configured.get_secret_value()):
            problems.append(f"{variable}: --profile scale keeps every service on PostgreSQL")
        else:
            explicit[variable] = configured.get_secret_value()
    if derived and settings.postgres_url is None:
        problems.append(
            "LEADMESH_POSTGRES_URL is not set (the PostgreSQL server the services' databases "
            "are made on, e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        )
    if mesh.redis() is None:
        problems.append("REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)")
    if problems:
        raise InvalidSettings("--profile scale: " + "; ".join(problems))
    return Databases(explicit, {v: _on_server(settings, name) for v, name in derived.items()})


def plan(settings: ScaleSettings, mesh: MeshSettings) -> ScalePlan:
    """Checks both stores, creates the missing databases; InvalidSettings names what is wrong."""
    found = service_databases(settings, mesh)
    problems = _unreachable_redis(mesh.redis() or "")
    for variable, url in found.explicit.items():
        problems += _unreachable_postgres(variable, url)
    if found.derived:
        problems += _unreachable_postgres("LEADMESH_POSTGRES_URL", _server(settings))
    if problems:
        raise InvalidSettings("--profile scale: " + "; ".join(problems))
    made = [make_url(url).database or "" for url in found.derived.values()]
    if made and (created := _create_missing(_server(settings), made)):
        print(f"leadmesh: created databases {', '.join(created)}", flush=True)
    names = made + [make_url(url).database or "" for url in found.explicit.values()]
    servers = [*found.explicit.values(), *([_server(settings)] if found.derived else [])]
    where = ", ".join(sorted({_address(url) for url in servers}))
    workers = runner_worker_processes(settings.runner_worker_processes, mesh)
    stores = [
        f"  PostgreSQL       {where}: {', '.join(names)}",
        f"  Redis            {_address(mesh.redis() or '', redis=True)} (queue, counters, locks)",
    ]
    return ScalePlan(found.environment(), PROCESSES + workers, stores)


def _is_postgres(url: str) -> bool:
    try:
        return make_url(url).get_backend_name() == "postgresql"
    except Exception:  # not a URL: the service's own settings say so when it starts
        return False


def _on_server(settings: ScaleSettings, database: str) -> str:
    """The URL of `database` on LEADMESH_POSTGRES_URL's server, password included."""
    url = make_url(settings.postgres_url.get_secret_value())  # type: ignore[union-attr]
    return url.set(database=database).render_as_string(hide_password=False)


def _server(settings: ScaleSettings) -> str:
    """LEADMESH_POSTGRES_URL, its database `postgres` when it names none."""
    url = make_url(settings.postgres_url.get_secret_value())  # type: ignore[union-attr]
    return url.set(database=url.database or "postgres").render_as_string(hide_password=False)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg://…`) as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _address(url: str, *, redis: bool = False) -> str:
    try:
        parsed: URL = make_url(url)
    except Exception:
        return "?"
    port = parsed.port or (6379 if redis else 5432)
    suffix = f"/{parsed.database}" if redis and parsed.database else ""
    return f"{parsed.host or 'localhost'}:{port}{suffix}"


def _why(error: Exception) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _unreachable_postgres(variable: str, url: str) -> list[str]:
    import psycopg

    try:
        psycopg.connect(_libpq(url), connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
    except Exception as error:  # any failure to connect, told in one line
        return [f"{variable}: PostgreSQL at {_address(url)} is not reachable ({_why(error)})"]
    return []


def _unreachable_redis(url: str) -> list[str]:
    import redis

    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    except ValueError as error:
        return [f"REDIS_URL: not a Redis URL ({_why(error)})"]
    try:
        client.ping()
    except Exception as error:  # refused, timed out, wrong password: one line
        return [f"REDIS_URL: Redis at {_address(url, redis=True)} is not reachable ({_why(error)})"]
    finally:
        client.close()
    return []


def _create_missing(server: str, names: list[str]) -> list[str]:
    """Creates those of the databases that do not exist yet; returns their names."""
    import psycopg
    from psycopg import sql

    created = []
    try:
        with psycopg.connect(
            _libpq(server), autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as admin:
            for name in names:
                found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if found.fetchone() is not None:
                    continue
                try:
                    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.DuplicateDatabase:
                    continue  # another `leadmesh up` made it meanwhile
                created.append(name)
    except psycopg.Error as error:
        raise InvalidSettings(
            f"--profile scale: LEADMESH_POSTGRES_URL: cannot create the services' databases on "
            f"{_address(server)} ({_why(error)})"
        ) from None
    return created
