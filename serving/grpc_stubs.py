"""Generate TorchServe's gRPC client stubs: `python -m serving.grpc_stubs` (make grpc-stubs).

The .proto files are read from the installed TorchServe's frontend jar, so the stubs always match
the server version pinned in pyproject.toml; nothing is copied into the repository. Output goes to
build/grpc (ignored): inference_pb2*.py, management_pb2*.py and google/rpc/status_pb2.py, which
inference.proto imports and the protobuf package does not ship.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

from model_src.cli import run_cli
from serving.config import REPO, ServeError

STUBS_DIR = REPO / "build" / "grpc"
PROTOS = ("inference.proto", "management.proto")
DEPENDENCIES = ("google/rpc/status.proto",)


def frontend_jar() -> Path:
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.exists():
        raise ServeError(f"TorchServe frontend jar not found at {jar}: is torchserve installed (make setup)?")
    return jar


def generate(out: Path = STUBS_DIR) -> Path:
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ts-protos-") as tmp, zipfile.ZipFile(frontend_jar()) as jar:
        for name in PROTOS + DEPENDENCIES:
            jar.extract(name, tmp)
        well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
        args = ["grpc_tools.protoc", f"-I{tmp}", f"-I{well_known}", f"--python_out={out}",
                f"--grpc_python_out={out}", *PROTOS, *DEPENDENCIES]
        if protoc.main(args) != 0:
            raise ServeError(f"protoc failed on {', '.join(PROTOS)} from {frontend_jar()}")
    return out


def import_stubs(folder: Path = STUBS_DIR):
    """(inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc) from build/grpc."""
    if not (folder / "inference_pb2_grpc.py").exists():
        raise ServeError(f"gRPC stubs missing in {folder}: run `make grpc-stubs`")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    import inference_pb2
    import inference_pb2_grpc
    import management_pb2
    import management_pb2_grpc

    return inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(STUBS_DIR))
    args = parser.parse_args(argv)
    out = generate(Path(args.out))
    print(f"gRPC stubs for {', '.join(PROTOS)} in {out}")
    return out


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (ServeError,))


if __name__ == "__main__":
    sys.exit(cli())
