"""Command line of pyproxy.

Only `--version` works so far; the proxy lands with the pyproxy issue. Until
then every other invocation exits with a clear error instead of pretending.
"""

from __future__ import annotations

import sys

from pykubelet.version import KUBERNETES_VERSION


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args:
        print(f"Kubernetes {KUBERNETES_VERSION}")
        return 0
    print("pyproxy: proxying services is not implemented yet (only --version is)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
