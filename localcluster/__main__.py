"""Command line of the local cluster; see `python -m localcluster --help`."""

from __future__ import annotations

import argparse
import sys

from . import cluster, metrics_server, settings
from .procs import UpError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="install what is missing, start the cluster, print how to use it")
    sub.add_parser("down", help="stop everything up started and remove its state from the host")
    sub.add_parser("status", help="which daemons run (exit 1 if any is down)")
    sub.add_parser("env", help="print the export lines for KUBECONFIG and PATH")
    build = sub.add_parser("build", help="build upstream programs into the cache (default: control plane + kubectl)")
    build.add_argument("programs", nargs="*", help="e.g. kubelet kube-proxy")
    msrv = sub.add_parser("metrics-server", help="a test fixture: build metrics-server, run it in the cluster and "
                          "wait until `kubectl top` works (--remove: delete it again)")
    msrv.add_argument("--remove", action="store_true", help="delete everything the deploy created")
    args = parser.parse_args(argv)

    config = settings.load()
    try:
        if args.command == "up":
            cluster.up(config)
            print("\n# The cluster is up. To use it:\n" + cluster.env_lines(config))
        elif args.command == "down":
            cluster.down(config)
        elif args.command == "status":
            state = cluster.status(config)
            for name, ok in state.items():
                print(f"{name:32} {'running' if ok else 'stopped'}")
            return 0 if all(state.values()) else 1
        elif args.command == "env":
            print(cluster.env_lines(config))
        elif args.command == "build":
            cluster.build_upstream(config, args.programs)
        elif args.command == "metrics-server" and args.remove:
            metrics_server.remove(config)
        elif args.command == "metrics-server":
            metrics_server.deploy(config)
            print("# metrics-server is Available; try: kubectl top node; kubectl top pod -A")
    except UpError as err:
        print(f"localcluster {args.command}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
