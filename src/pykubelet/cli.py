"""Command line of pykubelet: the upstream kubelet's flags and config file."""

from __future__ import annotations

import asyncio
import sys

from nodeagent import logs

from nodeagent.version import KUBERNETES_VERSION

# A flag or config file refused: exit 2 (systemd's EXIT_INVALIDARGUMENT, as argparse), which the units list in
# RestartPreventExitStatus= so that systemd leaves the unit failed with the message instead of retrying it.
USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args or "--version=true" in args:
        print(f"Kubernetes {KUBERNETES_VERSION}")
        return 0
    from .node.certificates import BootstrapError
    from .config.kubeletconfig import ConfigError, parse

    try:
        config = parse(args)
    except ConfigError as err:
        print(f"pykubelet: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    logs.setup(config.verbosity)
    from .kubelet import Kubelet

    try:
        asyncio.run(Kubelet(config).run())
    except BootstrapError as err:
        logs.get("kubelet").error("Failed to run pykubelet", err=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
