"""Command line of pyproxy: upstream kube-proxy's flags and KubeProxyConfiguration file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from nodeagent import logs

from nodeagent.version import KUBERNETES_VERSION

MODES = ("iptables", "nftables", "ipvs")

# A flag or config file refused: exit 2 (systemd's EXIT_INVALIDARGUMENT, as argparse), which the units list in
# RestartPreventExitStatus= so that systemd leaves the unit failed with the message instead of retrying it.
USAGE_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--version" in args or "--version=true" in args:
        print(f"Kubernetes {KUBERNETES_VERSION}")
        return 0
    if "--help" in args or "-h" in args:
        from pyproxy.config import KNOWN_FLAGS
        print("Usage: pyproxy [flags]\n\nThe flags of kube-proxy (v1.36):\n  "
              + "\n  ".join(f"--{name}" for name in sorted(KNOWN_FLAGS)))
        return 0
    from pyproxy.config import ConfigError, parse, render_document

    try:
        config = parse(args)
    except ConfigError as err:
        print(f"pyproxy: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    logs.setup(config.verbosity)
    log = logs.get("server")
    if config.ignored_flags:
        log.warning("Flags ignored because --config is given", flags=" ".join(config.ignored_flags))
    if config.inert_flags:
        log.info("Flags accepted for compatibility, without effect in pyproxy",
                 flags=" ".join("--" + name for name in config.inert_flags))
    if config.masquerade_bit != 14:
        log.warning("Only masquerade bit 14 (mark 0x4000, upstream's default) is supported; using it",
                    masqueradeBit=config.masquerade_bit)
    if config.write_config_to:
        Path(config.write_config_to).write_text(render_document(config))
        log.info("Wrote configuration", file=config.write_config_to)
        return 0

    from pyproxy.agent import Proxy, check_mode, cleanup_modes
    from pyproxy.backend import BackendUnavailable

    if config.cleanup:
        cleanup_modes(config, MODES)
        return 0
    try:
        check_mode(config)
    except BackendUnavailable as err:
        log.error("Cannot run this proxy mode", mode=config.mode, err=err)
        return 1
    cleanup_modes(config, leftover_modes(config.mode))
    if config.init_only:
        return 0
    asyncio.run(Proxy(config).run())
    return 0


def leftover_modes(mode: str) -> list[str]:
    """The modes whose leftovers a start in `mode` removes, as upstream's platformCleanup: the iptables-based modes
    (iptables, ipvs) remove nftables' table, the nftables mode removes the other two. iptables and ipvs share
    chains (KUBE-SERVICES, KUBE-POSTROUTING, …): cleaning one up at the other's start would empty the chains that
    carry the live traffic until the first sync rebuilt them (new connections were lost in that gap)."""
    return ["nftables"] if mode in ("iptables", "ipvs") else ["iptables", "ipvs"]


if __name__ == "__main__":
    sys.exit(main())
