"""Regenerate the committed stubs from api.proto.

    python -m cri.generate          # rewrite api_pb2.py and api_pb2.pyi
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
OUTPUTS = ("api_pb2.py", "api_pb2.pyi")

# protoc names the proto "cri/api.proto" (its path below src/), which keeps it
# distinct from other files called api.proto in the global descriptor pool. No
# service stubs: the calls go through cri.h2rpc, which needs only the messages.


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
            str(proto),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
        out = Path(tmp) / proto.parent.name
        return {name: (out / name).read_bytes() for name in OUTPUTS}


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
