"""Command line of the local cluster; see `python -m localcluster --help`."""

from __future__ import annotations

import argparse
import os
import sys

from . import (bootstrap, cluster, conformance, kubeadm_control_plane, metrics_server, node_conformance, settings,
               vagrant, wheels)
from .procs import UpError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="install what is missing, start the cluster, print how to use it")
    sub.add_parser("down", help="stop everything up started and remove its state from the host")
    sub.add_parser("status", help="which daemons run (exit 1 if any is down)")
    sub.add_parser("env", help="print the export lines for KUBECONFIG and PATH")
    sub.add_parser("join-command", help="print the `kubeadm join` line for this cluster (its bootstrap token and "
                   "CA hash), as `kubeadm token create --print-join-command` does")
    build = sub.add_parser("build", help="build upstream programs into the cache (default: control plane + kubectl)")
    build.add_argument("programs", nargs="*", help="e.g. kubelet kube-proxy")
    msrv = sub.add_parser("metrics-server", help="a test fixture: build metrics-server, run it in the cluster and "
                          "wait until `kubectl top` works (--remove: delete it again)")
    msrv.add_argument("--remove", action="store_true", help="delete everything the deploy created")
    conf = sub.add_parser("conformance", help="run the upstream [Conformance] specs against the cluster's nodes "
                          "(CONFORMANCE_FOCUS, CONFORMANCE_SKIP and CONFORMANCE_PROCS narrow or widen it)")
    conf.add_argument("--focus", default=os.environ.get("CONFORMANCE_FOCUS") or conformance.DEFAULT_FOCUS)
    conf.add_argument("--skip", default=os.environ.get("CONFORMANCE_SKIP", ""))
    conf.add_argument("--procs", type=int, default=int(os.environ.get("CONFORMANCE_PROCS") or conformance.DEFAULT_PROCS))
    conf.add_argument("--agents", choices=conformance.AGENTS, default=os.environ.get("NODE_AGENTS") or "pynode",
                      help="whose node agents the suite runs on: pynode's (the cluster's nodes) or, side by side, "
                      "the upstream kubelet and kube-proxy on nodes added for the run (NODE_AGENTS)")
    nconf = sub.add_parser("node-conformance", help="upstream's Node Conformance test (the [NodeConformance] specs "
                           "of test/e2e_node, with their own apiserver) in a test machine whose kubelet is pykubelet "
                           "or, with --agents upstream, the upstream kubelet (NODE_CONFORMANCE_FOCUS, _SKIP, _PROCS)")
    nconf.add_argument("--agents", choices=node_conformance.AGENTS, default=os.environ.get("NODE_AGENTS") or "pynode")
    nconf.add_argument("--focus", default=os.environ.get("NODE_CONFORMANCE_FOCUS") or node_conformance.DEFAULT_FOCUS)
    nconf.add_argument("--skip", default=os.environ.get("NODE_CONFORMANCE_SKIP", ""),
                       help="skipped besides the harness's own list (added to it, not replacing it)")
    nconf.add_argument("--procs", type=int,
                       default=int(os.environ.get("NODE_CONFORMANCE_PROCS") or node_conformance.DEFAULT_PROCS))
    nconf.add_argument("--no-results", action="store_true",
                       help="do not write bench/results/node-conformance-<date>-<agents>.md (a narrowed run)")
    nconf.add_argument("--keep-machine", action="store_true",
                       help="leave the test machine running afterwards; the next run reuses it")
    nconf.add_argument("--destroy", action="store_true", help="only remove a test machine left running")
    sub.add_parser("wheels", help="build dist/pynode-*.whl, dist/wheelhouse/ (it and every dependency) and "
                   "dist/wheelhouse.tar, what the ansible pynode role installs from")
    kcp = sub.add_parser("kubeadm-control-plane", help="`kubeadm init` in a test machine whose kubelet (pykubelet, or "
                         "the upstream kubelet with --agents upstream) runs the control plane's static pods; checks it "
                         "from outside, then `kubeadm reset` and destroys the machine")
    kcp.add_argument("--agents", choices=kubeadm_control_plane.AGENTS, default=os.environ.get("NODE_AGENTS") or "pynode")
    kcp.add_argument("--keep", action="store_true", help="leave the machine running afterwards (remove it with --destroy)")
    kcp.add_argument("--join-worker", action="store_true",
                     help="also join a second machine to it with the playbook's kubeadm_join role")
    kcp.add_argument("--destroy", action="store_true", help="only remove the machines a run left running")
    vms = sub.add_parser("vagrant", help="pynode workers as VMs (vagrant/), joined to this cluster: up, destroy, "
                         "status, env (the PYNODE_* lines for running vagrant by hand), net-up, net-down")
    vms.add_argument("action", choices=("up", "destroy", "status", "env", "net-up", "net-down"))
    vms.add_argument("--workers", type=int, default=int(os.environ.get("PYNODE_WORKERS") or 2))
    vms.add_argument("--proxy-mode", default=os.environ.get("PYNODE_PROXY_MODE") or "iptables")
    vms.add_argument("--agents", default=os.environ.get("PYNODE_AGENTS") or "pynode")
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
        elif args.command == "join-command":
            if not (config.pki / "ca.crt").exists():
                raise UpError(f"no cluster CA at {config.pki / 'ca.crt'}; run `make up` first")
            print(" ".join(bootstrap.join_command(config)))
        elif args.command == "build":
            cluster.build_upstream(config, args.programs)
        elif args.command == "wheels":
            print(wheels.wheelhouse(wheels.REPO / "dist"))
        elif args.command == "conformance":
            conformance.run(config, focus=args.focus, skip=args.skip, processes=args.procs, agents=args.agents)
        elif args.command == "node-conformance" and args.destroy:
            node_conformance.destroy(config)
        elif args.command == "node-conformance":
            node_conformance.run(config, agents=args.agents, focus=args.focus, skip=args.skip, processes=args.procs,
                                 results=not args.no_results, keep=args.keep_machine)
        elif args.command == "kubeadm-control-plane" and args.destroy:
            kubeadm_control_plane.destroy(config)
        elif args.command == "kubeadm-control-plane":
            report = kubeadm_control_plane.run(config, agents=args.agents, keep=args.keep, join_worker=args.join_worker)
            return 0 if report.passed else 1
        elif args.command == "vagrant":
            return vagrant.main(config, args.action, workers=args.workers, proxy_mode=args.proxy_mode,
                                agents=args.agents)
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
