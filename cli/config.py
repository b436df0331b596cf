"""`leadmesh config [--profile scale]`: the effective settings of every process `leadmesh up` (with
the same profile) would start from this shell, secrets masked, one `NAME=value` a line after a
`#` header. Under `--profile scale` that includes what the profile derives: each service's
`<NAME>_DATABASE_URL` on LEADMESH_POSTGRES_URL's server, `RUNNER_WORKERS=0`, and the
runner-worker processes with their metrics ports.

It reads settings only: it never dials a store, creates a database or prints a password (URLs are
shown with `***` in its place). A setting `up` would refuse is refused here the same way
(InvalidSettings: one line, exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from cli.mesh import PROCESSES, Process, runner_worker_processes
from services.kit.config import MeshSettings, describe, load_settings

PROFILES = ("default", "scale")


def add_profile_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """`--profile`, as `leadmesh up` takes it, for a command that must know the same mesh."""
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="default",
        help=f"the profile `leadmesh up` was started with (scale: {what})",
    )


@contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """These settings for the duration, as `up` sets them for every process it starts."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def config(args: argparse.Namespace) -> int:
    """Effective configuration of every process, secrets masked."""
    from cli.supervisor import RestartPolicy

    merged: dict[str, object] = describe(load_settings(RestartPolicy))
    extra: dict[str, str] = {}
    workers: tuple[Process, ...] = ()
    if args.profile == "scale":
        from cli import scale

        settings = load_settings(scale.ScaleSettings)
        mesh = load_settings(MeshSettings)
        extra = scale.service_databases(settings, mesh).environment()
        workers = runner_worker_processes(settings.runner_worker_processes, mesh)
        merged.update(describe(settings))
    with _environment(extra):
        for process in PROCESSES:
            process_settings = process.settings()
            merged.update(describe(process_settings))
            if process.migrations is not None:
                key = f"{process.name.upper()}_DATABASE_URL"
                merged[key] = describe_url(process.database_url(process_settings))
    # Settings come from the environment: this is what `leadmesh up` would start from this
    # shell, not necessarily what a running mesh (started elsewhere) uses.
    names = ", ".join(process.name for process in PROCESSES + workers)
    command = "leadmesh up" + (f" --profile {args.profile}" if workers else "")
    print(f"# settings of {names} as `{command}` would start them from this shell")
    for worker in workers:
        port = worker.default_port
        where = f"port {port} or the next free one" if port else "a free port"
        print(f"# {worker.name}: delivery only, /metrics on {where}")
    for key in sorted(merged):
        print(f"{key}={_show(merged[key])}")
    return 0


def describe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def _show(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def add_commands(commands) -> None:
    shown = commands.add_parser(
        "config",
        help="the effective configuration, secrets masked",
        description="The settings of every process `leadmesh up` would start from this shell.",
    )
    add_profile_argument(shown, "the services' PostgreSQL databases, the runner-worker processes")
    shown.set_defaults(run=config)
