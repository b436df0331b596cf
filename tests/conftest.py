"""Fixtures every layer shares: the mesh CA, real PostgreSQL and Redis, a database per backend.

Tests that need PostgreSQL or Redis skip with a reason when those are not running, and fail
instead when LEADMESH_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kit.config import MeshSettings
from services.kit.pki import ensure_mesh_pki

REQUIRE_SERVICES = os.environ.get("LEADMESH_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN_URL = os.environ.get(
    "LEADMESH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("LEADMESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; LEADMESH_REQUIRE_SERVICES=1 demands it")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mesh_var(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A var/ directory with the mesh CA and every process's certificate (made once)."""
    var = tmp_path_factory.mktemp("var")
    ensure_mesh_pki(var / "pki")
    return var


@pytest.fixture(scope="session")
def mesh(mesh_var: Path) -> MeshSettings:
    return MeshSettings(var_dir=mesh_var, _env_file=None)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except Exception as error:
        unavailable("PostgreSQL", error)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg
    from sqlalchemy import make_url

    name = f"lm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on the embedded default and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def redis_server() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as error:
        unavailable("Redis", error)
    return REDIS_URL
