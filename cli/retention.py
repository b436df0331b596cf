"""`leadmesh retention …`: the retention service's operator commands (status, purges, ledger,
erasure cases, the sealing migration), over gRPC with the operator's certificate. Every command
takes `--json`.

TIME (for `--as-of`) is ISO 8601 (`2027-01-05T00:00:00Z`) or relative to now (`+8d`, `-12h`,
`+30m`, `+90s`); now is the mesh's (LEADMESH_CLOCK_OFFSET_SECONDS included).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.json_format import MessageToDict
from leadmesh.retention.v1 import retention_pb2 as pb
from leadmesh.retention.v1 import retention_pb2_grpc

from cli.probes import operator_channel
from services.kit.clock import SystemClock
from services.kit.config import MeshSettings, load_settings
from services.kit.errors import from_rpc_error
from services.kit.timestamps import put_timestamp


class Refused(Exception):
    """The service refused or could not be reached: one line, exit 1."""


class BadInput(Exception):
    """The operator's input cannot be used: one line, exit 2."""


_RELATIVE = re.compile(r"^([+-])(\d+)([dhms])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_time(text: str, now: datetime) -> datetime:
    """ISO 8601 (a time zone required, `Z` allowed) or `±N{d,h,m,s}` from `now`."""
    match = _RELATIVE.match(text.strip())
    if match:
        sign, amount, unit = match.groups()
        delta = timedelta(**{_UNITS[unit]: int(amount)})
        return now + delta if sign == "+" else now - delta
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(
            f"invalid time {text!r}: use ISO 8601 such as 2027-01-05T00:00:00Z, or +8d, -12h"
        ) from None
    if when.tzinfo is None:
        raise BadInput(f"invalid time {text!r}: give a time zone (such as Z)")
    return when.astimezone(UTC)


def _as_of(args: argparse.Namespace, mesh: MeshSettings):
    if not getattr(args, "as_of", None):
        return None
    return parse_time(args.as_of, SystemClock(mesh.clock_offset_seconds).now())


def _stub(args: argparse.Namespace):
    """The mesh settings, the `--as-of` time (checked before anything is dialled), a channel,
    the stub and the metadata of every call."""
    mesh = load_settings(MeshSettings)
    as_of = _as_of(args, mesh)
    try:
        channel, metadata = operator_channel(mesh, "retention")
    except FileNotFoundError:
        raise Refused(
            f"no operator certificate under {mesh.pki_dir}: run `leadmesh migrate` or `leadmesh up`"
        ) from None
    return as_of, channel, retention_pb2_grpc.RetentionServiceStub(channel), metadata


def _call(method, request, metadata, timeout: float = 120):
    try:
        return method(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as error:
        raise Refused(_explain(error)) from None


def _explain(error: grpc.RpcError) -> str:
    remote = from_rpc_error(error)
    return f"{remote.code.name} {remote.reason}: {remote.message}".replace("\n", " ")


def _dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _short(stamp_dict_value: str | None) -> str:
    return stamp_dict_value.replace("T", " ")[:19] if stamp_dict_value else "-"


def _age(seconds: str | None) -> str:
    if not seconds:
        return "until erasure"
    value = float(seconds.rstrip("s"))
    if value % 86400 == 0:
        return f"{int(value // 86400)}d"
    if value % 3600 == 0:
        return f"{int(value // 3600)}h"
    return f"{int(value)}s"


def status(args: argparse.Namespace) -> int:
    as_of, channel, stub, metadata = _stub(args)
    with channel:
        request = pb.GetStatusRequest()
        if as_of is not None:
            put_timestamp(request.as_of, as_of)
        reply = _call(stub.GetStatus, request, metadata)
    if args.json:
        _print_json(_dict(reply))
        return 0
    rows = [
        ("PARTICIPANT", "CATEGORY", "MAX AGE", "OLDEST", "ROWS", "EXPIRED", "OLDEST KEY", "STATE")
    ]
    for item in reply.categories:
        policy = _dict(item.policy)
        rows.append(
            (
                item.participant,
                item.policy.category or "-",
                _age(policy.get("max_age")) if item.policy.category else "-",
                _short(policy.get("oldest_time")),
                str(item.policy.rows),
                str(item.policy.expired_rows),
                # Sealed categories: the oldest day whose key the vault still holds.
                (item.oldest_epoch_day or "none") if item.policy.sealed else "-",
                item.state + (f" ({item.error})" if item.error else ""),
            )
        )
    _print_table(rows)
    for case in reply.erasures_at_risk:
        deadline = _short(_dict(case).get("deadline"))
        print(f"erasure {case.id} at risk: {case.state}, deadline {deadline}")
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )


def run(args: argparse.Namespace) -> int:
    """Purges, with a progress line per category on stderr; exit 1 if any purge failed."""
    as_of, channel, stub, metadata = _stub(args)
    request = pb.RunPurgesRequest(
        participant=args.participant or "", category=args.category or "", dry_run=args.dry_run
    )
    if as_of is not None:
        put_timestamp(request.as_of, as_of)
    results, failed = [], False
    with channel:
        try:
            for progress in stub.RunPurges(request, metadata=metadata, timeout=3600):
                _show_progress(progress)
                if progress.done:
                    results.append(_dict(progress))
                    failed |= progress.outcome == "failed"
        except grpc.RpcError as error:
            raise Refused(_explain(error)) from None
    if args.json:
        _print_json(results)
    else:
        for item in results:
            line = f"{item['participant']}/{item['category']}: {item['outcome']}"
            line += f", {item.get('rows_deleted', '0')} deleted"
            if item.get("rows_still_expired", "0") != "0":
                line += f", {item['rows_still_expired']} still expired"
            print(line + (f" ({item['error']})" if item.get("error") else ""))
    return 1 if failed else 0


def _show_progress(progress: pb.PurgeProgress) -> None:
    """A plain-text bar on stderr: deleted against deleted + still expired."""
    total = progress.rows_deleted + progress.rows_still_expired
    share = progress.rows_deleted / total if total else 1.0
    bar = "#" * int(share * 30)
    end = "\n" if progress.done else "\r"
    label = f"{progress.participant}/{progress.category}"
    state = progress.outcome if progress.done else "purging"
    sys.stderr.write(f"{label:<40} [{bar:<30}] {progress.rows_deleted}/{total} {state}{end}")
    sys.stderr.flush()


def seal(args: argparse.Namespace) -> int:
    """The sealing migration: a summary line per category (a progress line per call on stderr
    with `--progress`); exit 1 if a category failed. Interrupting it loses nothing: each batch the
    participant seals is one transaction, and a run again goes on where this one stopped."""
    _, channel, stub, metadata = _stub(args)
    request = pb.RunSealingRequest(participant=args.participant or "", category=args.category or "")
    results, failed = [], False
    with channel:
        try:
            # No deadline: a large table takes as long as it takes, with progress all along.
            for progress in stub.RunSealing(request, metadata=metadata):
                if args.progress:
                    _show_sealing(progress)
                if progress.done:
                    results.append(progress)
                    failed |= bool(progress.error)
        except grpc.RpcError as error:
            raise Refused(_explain(error)) from None
        except KeyboardInterrupt:
            sys.stderr.write(
                "interrupted: what is sealed stays sealed; run `leadmesh retention seal` again"
                " to go on\n"
            )
            return 130
    if args.json:
        _print_json([_dict(p) for p in results])
    else:
        for item in results:
            print(_sealing_summary(item))
    return 1 if failed else 0


def _label(progress: pb.SealingProgress) -> str:
    return f"{progress.participant}/{progress.category or '-'}"


def _show_sealing(progress: pb.SealingProgress) -> None:
    sys.stderr.write(
        f"{_label(progress)}: {progress.rows_sealed} sealed, "
        f"{progress.rows_plaintext} in plaintext{' (done)' if progress.done else ''}\n"
    )
    sys.stderr.flush()


def _sealing_summary(item: pb.SealingProgress) -> str:
    if item.error:  # what is left is not known: the call that would have said it failed
        return f"{_label(item)}: failed, {item.rows_sealed} sealed ({item.error})"
    return (
        f"{_label(item)}: ok, {item.rows_sealed} sealed, {item.rows_plaintext} still in plaintext"
    )


def ledger(args: argparse.Namespace) -> int:
    _, channel, stub, metadata = _stub(args)
    request = pb.ListLedgerRequest(
        page_size=args.limit, participant=args.participant or "", category=args.category or ""
    )
    with channel:
        reply = _call(stub.ListLedger, request, metadata)
    if args.json:
        _print_json([_dict(e) for e in reply.entries])
        return 0
    rows = [("START", "PARTICIPANT", "CATEGORY", "CUTOFF", "DELETED", "TRIGGER", "OUTCOME")]
    for entry in reply.entries:
        shown = _dict(entry)
        rows.append(
            (
                _short(shown.get("start_time")),
                entry.participant,
                entry.category,
                _short(shown.get("cutoff")),
                str(entry.rows_deleted),
                entry.trigger,
                entry.outcome + (f" ({entry.error})" if entry.error else ""),
            )
        )
    _print_table(rows)
    return 0


def _print_cases(cases, as_json: bool) -> None:
    if as_json:
        _print_json([_dict(c) for c in cases])
        return
    rows = [("ID", "STATE", "REQUESTED", "EXECUTE AFTER", "DEADLINE", "STEPS")]
    for case in cases:
        shown = _dict(case)
        steps = " ".join(f"{s.participant}:{s.state}" for s in case.steps)
        rows.append(
            (
                case.id,
                case.state + (" AT RISK" if case.at_risk else ""),
                _short(shown.get("request_time")),
                _short(shown.get("execute_after")),
                _short(shown.get("deadline")),
                steps,
            )
        )
    _print_table(rows)


def erasures(args: argparse.Namespace) -> int:
    _, channel, stub, metadata = _stub(args)
    with channel:
        reply = _call(stub.ListErasures, pb.ListErasuresRequest(page_size=args.limit), metadata)
    _print_cases(reply.erasures, args.json)
    return 0


def process(args: argparse.Namespace) -> int:
    as_of, channel, stub, metadata = _stub(args)
    request = pb.ProcessErasuresRequest()
    if as_of is not None:
        put_timestamp(request.as_of, as_of)
    with channel:
        reply = _call(stub.ProcessErasures, request, metadata, timeout=1800)
    if not args.json and not reply.erasures:
        print("no erasure case is due")
        return 0
    _print_cases(reply.erasures, args.json)
    return 0


def show(args: argparse.Namespace) -> int:
    _, channel, stub, metadata = _stub(args)
    with channel:
        case = _call(stub.GetErasure, pb.GetErasureRequest(id=args.id), metadata)
    if args.json:
        shown = _dict(case)
        if case.certificate:
            shown["certificate"] = json.loads(case.certificate)
        _print_json(shown)
    elif case.certificate:
        _print_json(json.loads(case.certificate))
    else:
        _print_cases([case], False)
        print(f"no certificate yet: the case is {case.state}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line on stderr and exit status 2, never a usage block."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: {message}\n")
        raise SystemExit(2)


def add_commands(commands) -> None:
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="machine-readable output")
    # Under `erasures`, whose own --json stays set when given before the subcommand.
    json_again = argparse.ArgumentParser(add_help=False)
    json_again.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    top = commands.add_parser("retention", help="purges, compliance, erasure cases, sealing")
    top.error = OneLineParser.error.__get__(top)  # type: ignore[method-assign]
    retention = top.add_subparsers(
        dest="retention_command", required=True, parser_class=OneLineParser
    )
    shown = retention.add_parser(
        "status", parents=[json_flag], help="every category's compliance state"
    )
    shown.add_argument("--as-of", metavar="TIME", help="as it will be then (ISO 8601 or +8d)")
    shown.set_defaults(run=status)
    purge = retention.add_parser("run", parents=[json_flag], help="purge now (recorded)")
    purge.add_argument("--participant", metavar="P")
    purge.add_argument("--category", metavar="C")
    purge.add_argument("--as-of", metavar="TIME", help="purge what is expired then")
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    purge.set_defaults(run=run)
    sealing = retention.add_parser(
        "seal", parents=[json_flag], help="seal the rows written before sealing (resumable)"
    )
    sealing.add_argument("--participant", metavar="P")
    sealing.add_argument("--category", metavar="C")
    sealing.add_argument(
        "--progress", action="store_true", help="a line per call on stderr: sealed, left"
    )
    sealing.set_defaults(run=seal)
    listed = retention.add_parser("ledger", parents=[json_flag], help="purge runs, newest first")
    listed.add_argument("--participant", metavar="P")
    listed.add_argument("--category", metavar="C")
    listed.add_argument("--limit", type=int, default=100)
    listed.set_defaults(run=ledger)
    cases = retention.add_parser("erasures", parents=[json_flag], help="erasure cases")
    cases.add_argument("--limit", type=int, default=100)
    cases.set_defaults(run=erasures)
    actions = cases.add_subparsers(dest="erasures_command")
    due = actions.add_parser("process", parents=[json_again], help="execute every case due")
    due.add_argument("--as-of", metavar="TIME", help="every case due then")
    due.set_defaults(run=process)
    one = actions.add_parser("show", parents=[json_again], help="one case and its certificate")
    one.add_argument("id")
    one.set_defaults(run=show)
