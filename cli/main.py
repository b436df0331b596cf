"""The `leadmesh` command."""

from __future__ import annotations

import argparse
import sys

from services.kit.config import InvalidSettings, load_settings, report_invalid


def _migrate(_args: argparse.Namespace) -> int:
    from cli.mesh import check_settings
    from cli.supervisor import prepare
    from services.kit.config import MeshSettings

    check_settings()  # before any database is touched
    prepare(load_settings(MeshSettings))
    print("every service's database is at its newest migration")
    return 0


def _announce(args: argparse.Namespace) -> int:
    """Sends a marketing e-mail to every account that consented to the purpose."""
    import grpc
    from leadmesh.identity.v1 import identity_pb2, identity_pb2_grpc

    from cli.probes import operator_channel
    from services.kit.config import MeshSettings
    from services.kit.errors import from_rpc_error

    body = args.body if args.body is not None else open(args.body_file, encoding="utf-8").read()
    purpose = identity_pb2.Purpose.Value(f"PURPOSE_{args.purpose.upper()}")
    channel, metadata = operator_channel(load_settings(MeshSettings), "identity")
    with channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        request = identity_pb2.SendAnnouncementRequest(
            purpose=purpose, subject=args.subject, body=body
        )
        try:
            reply = stub.SendAnnouncement(request, metadata=metadata, timeout=300)
        except grpc.RpcError as error:
            remote = from_rpc_error(error)
            print(f"refused: {remote.code.name} {remote.reason} {remote.message}", file=sys.stderr)
            return 1
    print(f"sent to {reply.recipient_count} recipients")
    return 0


def _up(args: argparse.Namespace) -> int:
    from cli.mesh import check_settings
    from cli.supervisor import RestartPolicy, up

    if args.profile != "scale":
        check_settings(RestartPolicy)
        return up()
    import os

    from cli import scale
    from services.kit.config import MeshSettings

    check_settings(RestartPolicy, scale.ScaleSettings)
    # Both stores checked (and the missing databases made) before anything else is touched.
    plan = scale.plan(load_settings(scale.ScaleSettings), load_settings(MeshSettings))
    # Every process `up` starts, and its own migrations, read these like any other setting.
    os.environ.update(plan.environment)
    check_settings(RestartPolicy)
    return up(plan.processes, plan.stores)


UP_PROFILES = """profiles:
  default  every service on a SQLite file under var/, counters in memory, delivery inside
           the runner (no other server needed)
  scale    as scaled out, on this machine: every service on a PostgreSQL database of its own
           on LEADMESH_POSTGRES_URL's server (LEADMESH_DATABASE_PREFIX + service name, created
           when missing, migrated), Redis at REDIS_URL (queue, counters, locks), and
           LEADMESH_RUNNER_WORKER_PROCESSES (2) runner-worker processes doing every delivery
           (the runner runs with RUNNER_WORKERS=0), each on its own metrics port from
           RUNNER_WORKER_METRICS_PORT up. A missing or unreachable store stops it before
           anything starts, naming the setting."""


def _runner_worker(args: argparse.Namespace) -> int:
    from cli.mesh import runner_workers

    return runner_workers(["--count", str(args.count)])


def main(argv: list[str] | None = None) -> int:
    from cli.retention import OneLineParser

    # Bad input is one line and exit status 2, as a wrong setting is.
    parser = OneLineParser(prog="leadmesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "up",
        help="start the whole mesh on this machine",
        description="Prepare var/, migrate, start every process, wait until each serves, print "
        "where the mesh listens; Ctrl-C or SIGTERM stops them all.",
        epilog=UP_PROFILES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    start.add_argument(
        "--profile",
        choices=["default", "scale"],
        default="default",
        help="default: SQLite, no Redis; scale: PostgreSQL, Redis, runner-worker processes",
    )
    start.set_defaults(run=_up)
    commands.add_parser(
        "migrate", help="create the mesh CA and migrate every database"
    ).set_defaults(run=_migrate)
    announce = commands.add_parser(
        "announce", help="e-mail every account that consented to a marketing purpose"
    )
    announce.add_argument("--purpose", required=True, choices=["business_matters", "new_features"])
    announce.add_argument("--subject", required=True)
    text = announce.add_mutually_exclusive_group(required=True)
    text.add_argument("--body", help="plain text")
    text.add_argument("--body-file", help="a file holding the plain text")
    announce.set_defaults(run=_announce)
    worker = commands.add_parser(
        "runner-worker", help="delivery workers only (scale out: run several, any machine)"
    )
    worker.add_argument("--count", type=int, default=1, help="workers in this process")
    worker.set_defaults(run=_runner_worker)
    from cli import config, keys, retention, status, trace

    config.add_commands(commands)
    status.add_commands(commands)
    trace.add_commands(commands)
    keys.add_commands(commands)
    retention.add_commands(commands)
    args = parser.parse_args(argv)
    from services.kit.db import private_umask

    # Inherited by every process `up` starts: what any of them writes under var/ is private.
    private_umask()
    try:
        return args.run(args)
    except (keys.Refused, retention.Refused) as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 1
    except retention.BadInput as bad:
        print(f"leadmesh: {bad}", file=sys.stderr)
        return 2
    except InvalidSettings as invalid:
        report_invalid(invalid)
        return 2


if __name__ == "__main__":
    sys.exit(main())
