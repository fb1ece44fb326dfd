"""`pyproxy --cleanup` removes what every mode wrote, run inside a network namespace the test creates."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from pyproxy.backend import NodeContext
from pyproxy.iptables import IptablesBackend
from pyproxy.model import Endpoint, ServicePort
from pyproxy.nftables import NftablesBackend
from tests.integration.proxytopo import nsx, sh

pytestmark = pytest.mark.integration

NS = f"pyproxy-x{os.getpid() % 100000}"
PYPROXY = str(Path(sys.executable).parent / "pyproxy") if (Path(sys.executable).parent / "pyproxy").exists() \
    else shutil.which("pyproxy")


@pytest.fixture
def netns():
    sh("ip", "netns", "add", NS)
    try:
        yield NS
    finally:
        sh("ip", "netns", "del", NS, check=False)


def test_cleanup_removes_every_modes_rules(netns):
    svc = ServicePort(namespace="t", name="web", port_name="http", protocol="TCP", port=80,
                      cluster_ips=("10.232.0.10",), node_port=30080)
    state = ({svc.key: svc}, {svc.key: [Endpoint(ip="10.231.0.11", port=8080)]})
    node = NodeContext(node_name="n", node_ips=("10.233.0.1",))
    for backend in (IptablesBackend(node, netns=netns, variant="nft"),
                    IptablesBackend(node, netns=netns, variant="legacy"), NftablesBackend(node, netns=netns)):
        backend.sync(*state, None)
    assert "KUBE-SVC-" in nsx(netns, "iptables-nft-save").stdout
    assert "KUBE-SVC-" in nsx(netns, "iptables-legacy-save").stdout
    assert nsx(netns, "nft", "list", "table", "ip", "kube-proxy", check=False).returncode == 0

    result = nsx(netns, PYPROXY, "--cleanup", "--hostname-override=n")
    assert result.returncode == 0, result.stderr
    assert "KUBE-" not in nsx(netns, "iptables-nft-save").stdout
    assert "KUBE-" not in nsx(netns, "iptables-legacy-save").stdout
    assert nsx(netns, "nft", "list", "table", "ip", "kube-proxy", check=False).returncode != 0
    # Nothing left: a second clean-up is a no-op, not an error.
    assert nsx(netns, PYPROXY, "--cleanup", "--hostname-override=n").returncode == 0
