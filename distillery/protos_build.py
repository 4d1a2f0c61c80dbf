"""Generate the Python stubs from protos/ (``make protos``), or check them (``--check``).

Stubs are committed next to the client code, importable by the proto package
path (``distillery.ingest.v1.ingest_pb2``). ``--check`` regenerates into a
temporary directory and fails when anything differs from what is committed,
so a proto edited without ``make protos`` cannot land.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> list[Path]:
    """Write the stubs for every proto under protos/ into ``out``; return them, relative."""
    protos = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    plugin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    files = []
    for path in sorted(out.rglob("*")):
        if path.name.endswith(SUFFIXES):
            files.append(path.relative_to(out))
    # Every generated folder is a package.
    for folder in {f.parent for f in files}:
        while folder != Path("."):
            (out / folder / "__init__.py").touch()
            files.append(folder / "__init__.py")
            folder = folder.parent
    return sorted(set(files))


def committed() -> set[Path]:
    return {p.relative_to(ROOT) for s in SUFFIXES for p in (ROOT / "distillery").rglob(f"*{s}")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift from protos/")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = generate(out)
        stubs = {f for f in files if f.name != "__init__.py"}
        if check:
            drift = sorted(
                str(f) for f in stubs if not (ROOT / f).exists() or not filecmp.cmp(out / f, ROOT / f, shallow=False)
            )
            drift += sorted(str(f) for f in committed() - stubs)
            if drift:
                print("generated stubs drift from protos/ (run `make protos`):", *drift, sep="\n  ")
                return 1
            print(f"stubs match protos/ ({len(stubs)} files)")
            return 0
        for stale in committed() - stubs:
            (ROOT / stale).unlink()
        for f in files:
            target = ROOT / f
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.name == "__init__.py" and target.exists():
                continue
            shutil.copyfile(out / f, target)
        print(f"wrote {len(stubs)} stub files under distillery/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
