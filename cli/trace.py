"""`leadmesh trace RUN_ID`: the spans of one run's trace as an indented tree (parent → children by
start time), each with its name, service, duration and status, an error span with its message.

The runner names the trace (the run's row keeps the traceparent of the request that queued it; it
is asked with the operator's certificate); the spans come from the OTLP-JSON files under
`var/traces/`, or from Jaeger's query API with `--jaeger URL`. A scheduled run has no such trace:
each of its attempts is found by the run id its HTTP calls carry (`leadmesh.run_id`).
"""

from __future__ import annotations

import argparse
import json

import grpc
from leadmesh.runner.v1 import runner_pb2 as pb
from leadmesh.runner.v1 import runner_pb2_grpc

from cli.probes import operator_channel
from cli.retention import OneLineParser, Refused
from cli.spans import SourceUnreachable, Span, from_files, from_jaeger, from_jaeger_run, tree
from services.kit.config import MeshSettings, load_settings
from services.kit.errors import from_rpc_error


def _run_trace(mesh: MeshSettings, run_id: str) -> pb.RunTrace:
    try:
        channel, metadata = operator_channel(mesh, "runner")
    except FileNotFoundError:
        raise Refused(
            f"no operator certificate under {mesh.pki_dir}: run `leadmesh migrate` or `leadmesh up`"
        ) from None
    with channel:
        stub = runner_pb2_grpc.RunnerServiceStub(channel)
        try:
            return stub.GetRunTrace(
                pb.GetRunTraceRequest(run_id=run_id), metadata=metadata, timeout=10
            )
        except grpc.RpcError as error:
            remote = from_rpc_error(error)
            if remote.reason == "RUN_NOT_FOUND":
                raise Refused(
                    f"run {run_id} is unknown (never existed, or past its retention)"
                ) from None
            message = remote.message.replace("\n", " ")
            raise Refused(f"the runner answered {remote.code.name}: {message}") from None


def spans_of(args: argparse.Namespace, mesh: MeshSettings, run: pb.RunTrace) -> list[Span]:
    if args.jaeger:
        if run.trace_id:
            return from_jaeger(args.jaeger, run.trace_id)
        return from_jaeger_run(args.jaeger, run.run_id)
    directory = mesh.var_dir / "traces"
    if run.trace_id:
        return from_files(directory, run.trace_id)
    # A scheduled run: every trace one of its calls belongs to.
    trace_ids = {span.trace_id for span in from_files(directory, run.run_id)}
    return [span for trace_id in sorted(trace_ids) for span in from_files(directory, trace_id)]


def _where(args: argparse.Namespace, mesh: MeshSettings) -> str:
    return f"Jaeger at {args.jaeger}" if args.jaeger else f"{mesh.var_dir / 'traces'}"


def _line(span: Span, depth: int) -> str:
    status = "ERROR" + (f": {span.message}" if span.message else "") if span.error else "ok"
    return f"{'  ' * depth}{span.name}  [{span.service}]  {span.duration_ms:.1f} ms  {status}"


def _lines(spans: list[Span], depth: int = 0) -> list[str]:
    out = []
    for span in spans:
        out.append(_line(span, depth))
        out += _lines(span.children, depth + 1)
    return out


def _as_dict(span: Span) -> dict:
    return {
        "name": span.name,
        "service": span.service,
        "kind": span.kind,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_id,
        "start_time_unix_nano": span.start_ns,
        "duration_ms": round(span.duration_ms, 3),
        "status": "error" if span.error else "ok",
        "status_message": span.message,
        "attributes": span.attributes,  # ids and protocol fields only (telemetry.py)
        "children": [_as_dict(child) for child in span.children],
    }


def trace(args: argparse.Namespace) -> int:
    mesh = load_settings(MeshSettings)
    run = _run_trace(mesh, args.run_id)
    try:
        spans = spans_of(args, mesh, run)
    except SourceUnreachable as error:
        raise Refused(str(error)) from None
    if not spans:
        named = f"trace {run.trace_id}" if run.trace_id else "the traces of its attempts"
        raise Refused(
            f"run {run.run_id}: {named} has no spans in {_where(args, mesh)} "
            "(purged past its retention, or not exported yet)"
        )
    roots = tree(spans)
    if args.json:
        shown = {
            "run_id": run.run_id,
            "status": run.status,
            "trace_ids": sorted({s.trace_id for s in spans}),
            "span_count": len({s.span_id for s in spans}),
            "spans": [_as_dict(root) for root in roots],
        }
        print(json.dumps(shown, indent=2))
        return 0
    trace_ids = ", ".join(sorted({s.trace_id for s in spans}))
    print(f"run {run.run_id} ({run.status}), trace {trace_ids}")
    for line in _lines(roots):
        print(line)
    return 0


def add_commands(commands) -> None:
    shown = commands.add_parser(
        "trace", help="the spans of one run's trace as a tree", parents=[], description=__doc__
    )
    shown.error = OneLineParser.error.__get__(shown)  # type: ignore[method-assign]
    shown.add_argument("run_id", metavar="RUN_ID")
    shown.add_argument(
        "--jaeger", metavar="URL", help="read from Jaeger's query API (e.g. http://localhost:16686)"
    )
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.set_defaults(run=trace)
