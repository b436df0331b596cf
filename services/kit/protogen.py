"""Generates the gRPC stubs (and type stubs) from `protos/` into `gen/` with grpcio-tools.

Stubs are never committed. `gen/` is made importable by a `.pth` file in the running
interpreter's site-packages, so `from leadmesh.identity.v1 import identity_pb2` works everywhere
the project's virtual environment is used. Run: `python -m services.kit.protogen`.
"""

from __future__ import annotations

import argparse
import shutil
import site
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]


def generate(protos: Path = ROOT / "protos", out: Path = ROOT / "gen") -> list[Path]:
    sources = sorted(protos.rglob("*.proto"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{protos}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(s) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sources


def install_path(out: Path = ROOT / "gen") -> Path:
    pth = Path(site.getsitepackages()[0]) / "leadmesh-gen.pth"
    pth.write_text(f"{out}\n")
    return pth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="generate gRPC stubs from protos/")
    parser.add_argument("--protos", type=Path, default=ROOT / "protos")
    parser.add_argument("--out", type=Path, default=ROOT / "gen")
    parser.add_argument(
        "--no-path-file", action="store_true", help="do not add the output to site-packages"
    )
    args = parser.parse_args(argv)
    sources = generate(args.protos.resolve(), args.out.resolve())
    note = "" if args.no_path_file else f"; path file {install_path(args.out.resolve())}"
    sys.stderr.write(f"generated stubs for {len(sources)} protos into {args.out}{note}\n")


if __name__ == "__main__":
    main()
