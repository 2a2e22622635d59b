"""Generate the Python code of the gRPC contract in ``protos/``.

``python -m services.common.protogen`` (what ``make protos`` runs) compiles every ``.proto`` under
``protos/seedstack`` with the pinned ``grpcio-tools`` into ``*_pb2.py``, ``*_pb2_grpc.py`` and
``*_pb2.pyi`` beside its source, writes the empty ``__init__.py`` files that make each
``seedstack.<service>.v1`` an importable package, and deletes generated files whose source is gone.
``generate(out_dir)`` writes the same tree elsewhere, so a test can check that the committed files
are what the protos generate.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "protos"
"""The include root of the contract: ``protos/seedstack/<service>/v1/<service>.proto`` lie below it."""

PACKAGE = "seedstack"
"""Top-level package of the contract; generated code lives under ``PROTO_ROOT / PACKAGE``."""

GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
"""Endings of the files protoc writes per ``.proto``."""


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Every ``.proto`` of the contract, relative to ``proto_root``, sorted."""
    return sorted(p.relative_to(proto_root) for p in (proto_root / PACKAGE).rglob("*.proto"))


def _run_protoc(args: list[str], proto_root: Path) -> None:
    # The well-known types (google/protobuf/timestamp.proto) ship inside grpc_tools.
    well_known = resources.files("grpc_tools") / "_proto"
    sources = [p.as_posix() for p in proto_files(proto_root)]
    if not sources:
        raise FileNotFoundError(f"no .proto files under {proto_root / PACKAGE}")
    argv = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", *args, *sources]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(argv)}")


def generate(out_dir: Path, *, proto_root: Path = PROTO_ROOT) -> None:
    """Write the generated modules and package ``__init__.py`` files for every proto into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = str(out_dir)
    _run_protoc([f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}"], proto_root)
    for proto in proto_files(proto_root):
        package_dir = proto.parent
        while package_dir != Path("."):
            (out_dir / package_dir / "__init__.py").touch()
            package_dir = package_dir.parent


def generated_files(root: Path) -> set[Path]:
    """Relative paths of the generated files (modules, stubs, ``__init__.py``) under ``root / PACKAGE``."""
    return {
        p.relative_to(root)
        for p in (root / PACKAGE).rglob("*")
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(GENERATED_SUFFIXES))
    }


def load_descriptors(*, proto_root: Path = PROTO_ROOT) -> descriptor_pb2.FileDescriptorSet:
    """The contract's file descriptors, with source info (comments and their locations)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "contract.binpb"
        _run_protoc([f"--descriptor_set_out={out}", "--include_source_info"], proto_root)
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def sync(proto_root: Path = PROTO_ROOT) -> tuple[int, int]:
    """Regenerate in place; returns (files written because they changed, stale files deleted)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root, proto_root=proto_root)
        fresh = generated_files(fresh_root)
        num_written = 0
        for rel in sorted(fresh):
            content = (fresh_root / rel).read_bytes()
            target = proto_root / rel
            if not target.is_file() or target.read_bytes() != content:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
                num_written += 1
    stale = generated_files(proto_root) - fresh
    for rel in stale:
        (proto_root / rel).unlink()
    return num_written, len(stale)


def main() -> None:
    """Regenerate the committed code from the protos and print a one-line summary."""
    num_written, num_deleted = sync()
    num_protos = len(proto_files())
    print(f"protogen: {num_protos} protos, {num_written} files updated, {num_deleted} stale files deleted")


if __name__ == "__main__":
    main()
