"""Regenerate the committed stubs from api.proto.

    python -m cri.generate          # rewrite api_pb2.py, api_pb2.pyi, api_pb2_grpc.py
    python -m cri.generate --check  # exit 1 if they are out of date

Needs grpcio-tools (a dev dependency). The output depends only on api.proto and
the grpcio-tools version, so regenerating twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO = PACKAGE_DIR / "api.proto"
OUTPUTS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")

# protoc names the proto "cri/api.proto" (its path below src/), which keeps it
# distinct from other files called api.proto in the global descriptor pool; the
# grpc plugin then imports the messages absolutely, which we make relative.
_ABSOLUTE_IMPORT = b"from cri import api_pb2 as"
_RELATIVE_IMPORT = b"from . import api_pb2 as"


def render(proto: Path = PROTO) -> dict[str, bytes]:
    """Compile ``proto`` (which must live in a ``cri`` directory) and return {file name: content}."""
    from grpc_tools import protoc

    proto = proto.resolve()
    root = proto.parent.parent
    include = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--proto_path={include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
        out = Path(tmp) / proto.parent.name
        files = {name: (out / name).read_bytes() for name in OUTPUTS}

    grpc = files["api_pb2_grpc.py"]
    if _ABSOLUTE_IMPORT not in grpc:
        raise RuntimeError("grpc stub import not found; has the plugin's output changed?")
    files["api_pb2_grpc.py"] = grpc.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT)
    return files


def stale(target: Path = PACKAGE_DIR) -> list[str]:
    """Names of committed stubs that differ from freshly generated ones."""
    fresh = render(target / PROTO.name)
    return [n for n, data in fresh.items() if not (target / n).is_file() or (target / n).read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cri.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    opts = parser.parse_args(argv)

    if opts.check:
        names = stale()
        for name in names:
            print(f"stale: {PACKAGE_DIR / name}", file=sys.stderr)
        return 1 if names else 0

    for name, data in render().items():
        path = PACKAGE_DIR / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
