"""Command line of pykubelet.

Only `--version` works so far; running a node lands with the node issue. Until
then every other invocation exits with a clear error instead of pretending.
"""

from __future__ import annotations

import sys

from .version import KUBERNETES_VERSION


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args:
        print(f"Kubernetes {KUBERNETES_VERSION}")
        return 0
    print("pykubelet: running a node is not implemented yet (only --version is)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
