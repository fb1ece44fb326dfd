"""pykubelet joins the cluster as a node: TLS bootstrap, registration, status, Lease, outages, restarts.

The cluster's own pykubelet runs node pynode-n1. These tests start a second
pykubelet in the same node namespace, registering a Node of its own name from
nothing but the bootstrap kubeconfig, so that they can restart it and break
its dependencies without disturbing the first.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import time
from pathlib import Path

import psutil
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from lightkube.resources.certificates_v1 import CertificateSigningRequest
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node

from localcluster import agents as agent_runner
from localcluster import containerd, controlplane, procs, settings

from pykubelet.volumes import mounts
from tests.integration.polling import eventually

pytestmark = pytest.mark.integration

NAME = "pynode-joiner"


def ready_condition(admin, name=NAME):
    try:
        node = admin.get(Node, name)
    except Exception:  # noqa: BLE001 - not registered yet
        return None
    return next((c for c in (node.status.conditions or []) if c.type == "Ready"), None) if node.status else None


@pytest.fixture(scope="module")
def joiner_dir(cluster, tmp_path_factory):
    return tmp_path_factory.mktemp("joiner")


def joiner_flags(node, root: Path) -> list[str]:
    config = agent_runner.kubelet_configuration(node)
    config.update(healthzPort=10348, port=10350)  # the cluster's own pykubelet holds 10248 and 10250
    del config["podCIDR"]
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return [f"--config={root / 'config.yaml'}", f"--bootstrap-kubeconfig={node.cluster.bootstrap_kubeconfig}",
            f"--kubeconfig={root / 'kubelet.conf'}", f"--cert-dir={root / 'pki'}", f"--root-dir={root}",
            f"--hostname-override={NAME}", f"--node-ip={node.ip}", "--node-labels=pynode.test/role=joiner",
            "--register-with-taints=pynode.test/joiner=true:NoSchedule"]


@pytest.fixture(scope="module")
def joiner(cluster, node, admin, joiner_dir):
    """The second pykubelet, started once for the module (tests may restart it)."""
    started = time.monotonic()
    agent = agent_runner.start(node, "pykubelet", *joiner_flags(node, joiner_dir), instance="joiner")
    yield {"agent": agent, "started": started, "dir": joiner_dir}
    procs.stop(cluster, agent.name)
    mounts.unmount_all(joiner_dir)  # its root dir, which it bound onto itself to share it, as upstream
    try:
        admin.delete(Node, NAME)
    except Exception:  # noqa: BLE001
        pass


def test_joins_with_only_a_bootstrap_kubeconfig(joiner, admin, cluster):
    root = joiner["dir"]
    ready = eventually(lambda: (c := ready_condition(admin)) and c.status == "True" and c, 60, "the node to be Ready")
    elapsed = time.monotonic() - joiner["started"]
    assert elapsed < 40, f"Ready after {elapsed:.0f}s, more than one lease period"
    assert ready.reason == "KubeletReady" and ready.message == "kubelet is posting ready status"

    kubeconfig = yaml.safe_load((root / "kubelet.conf").read_text())
    current = root / "pki" / "kubelet-client-current.pem"
    assert kubeconfig["users"][0]["user"]["client-certificate"] == str(current)
    assert kubeconfig["clusters"][0]["cluster"]["server"] == cluster.server
    assert current.is_symlink() and current.resolve().name.startswith("kubelet-client-20")
    assert current.stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(current.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{NAME}"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"

    csrs = [c for c in admin.list(CertificateSigningRequest)
            if c.spec.signerName == "kubernetes.io/kube-apiserver-client-kubelet"
            and c.status and c.status.certificate
            and x509.load_pem_x509_certificate(base64.b64decode(c.status.certificate)).serial_number
            == cert.serial_number]
    assert len(csrs) == 1 and csrs[0].spec.username.startswith("system:bootstrap:")
    assert [c.reason for c in csrs[0].status.conditions if c.type == "Approved"] == ["AutoApproved"]


def test_registered_node_describes_the_host(joiner, admin, node, cluster):
    eventually(lambda: ready_condition(admin), 60, "the node to register")
    obj = admin.get(Node, NAME)
    labels = obj.metadata.labels
    assert labels["kubernetes.io/hostname"] == NAME
    assert labels["kubernetes.io/os"] == "linux" and labels["kubernetes.io/arch"] == "amd64"
    assert labels["pynode.test/role"] == "joiner"
    # node.kubernetes.io/not-ready may still be there: the node lifecycle controller's, removed soon after Ready.
    assert [(t.key, t.value, t.effect) for t in obj.spec.taints
            if not t.key.startswith("node.kubernetes.io/")] == [("pynode.test/joiner", "true", "NoSchedule")]

    status = obj.status
    assert {(a.type, a.address) for a in status.addresses} == {("InternalIP", node.ip), ("Hostname", NAME)}
    assert status.capacity["cpu"] == str(os.cpu_count())
    assert status.capacity["memory"] == f"{psutil.virtual_memory().total // 1024}Ki"
    assert status.capacity["pods"] == "110"
    assert status.capacity["ephemeral-storage"].endswith("Ki")
    assert {"hugepages-2Mi", "hugepages-1Gi"} <= set(status.capacity)
    assert int(status.allocatable["memory"][:-2]) < int(status.capacity["memory"][:-2])  # less evictionHard
    info = status.nodeInfo
    assert info.kubeletVersion == cluster.version
    expected = "containerd://1.6." if node.runtime == "debian" else \
        f"containerd://{settings.containerd_versions()[0]}"
    assert info.containerRuntimeVersion.startswith(expected), info.containerRuntimeVersion
    assert info.operatingSystem == "linux" and info.architecture == "amd64"
    assert info.bootID == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert info.kernelVersion == os.uname().release
    assert status.daemonEndpoints.kubeletEndpoint.Port == 10350
    names = {n for image in status.images for n in image.names}
    assert "docker.io/library/busybox:latest" in names
    assert [c.type for c in status.conditions] == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]


def test_the_lease_keeps_renewing(joiner, admin, node):
    eventually(lambda: ready_condition(admin), 60, "the node to register")
    first = eventually(lambda: _lease(admin), 30, "the node lease")
    assert first.spec.holderIdentity == NAME and first.spec.leaseDurationSeconds == 40
    assert first.metadata.ownerReferences[0].name == NAME
    second = eventually(lambda: (lease := _lease(admin)) and lease.spec.renewTime > first.spec.renewTime and lease,
                        25, "the lease to be renewed")
    assert (second.spec.renewTime - first.spec.renewTime).total_seconds() <= 15


def _lease(admin):
    try:
        return admin.get(Lease, NAME, namespace="kube-node-lease")
    except Exception:  # noqa: BLE001
        return None


def test_a_restart_keeps_the_same_node_object(joiner, admin, node, cluster):
    eventually(lambda: ready_condition(admin), 60, "the node to register")
    before = admin.get(Node, NAME).metadata.uid
    certs_before = sorted(p.name for p in (joiner["dir"] / "pki").iterdir())
    procs.stop(cluster, joiner["agent"].name)
    joiner["agent"] = agent_runner.start(node, "pykubelet", *joiner_flags(node, joiner["dir"]), instance="joiner")
    log = joiner["agent"].log
    eventually(lambda: "Node was previously registered" in log.read_text(), 30, "the restarted kubelet to reconcile")
    assert admin.get(Node, NAME).metadata.uid == before
    assert sorted(p.name for p in (joiner["dir"] / "pki").iterdir()) == certs_before, "no new bootstrap"
    eventually(lambda: (c := ready_condition(admin)) and c.status == "True", 30, "Ready after the restart")


def test_apiserver_outage_is_survived(joiner, admin, node, cluster):
    eventually(lambda: (c := ready_condition(admin)) and c.status == "True", 60, "Ready")
    pid = joiner["agent"].pid
    procs.stop(cluster, "kube-apiserver")
    time.sleep(12)  # a status tick and a lease renewal fail meanwhile
    controlplane.start(cluster)
    stopped_at = dt.datetime.now(dt.timezone.utc)
    eventually(lambda: (lease := _lease(admin)) and lease.spec.renewTime > stopped_at, 30,
               "the lease to renew after the apiserver returned")
    # The Lease is the heartbeat: an unchanged status is only re-sent every nodeStatusReportFrequency.
    assert ready_condition(admin).status == "True"
    assert joiner["agent"].pid == pid and joiner["agent"].running(), "pykubelet must not restart"
    assert "Failed to renew node lease" in joiner["agent"].log.read_text()


def test_runtime_outage_turns_ready_false_and_back(joiner, admin, node, cluster):
    eventually(lambda: (c := ready_condition(admin)) and c.status == "True", 60, "Ready")
    procs.stop(cluster, f"containerd-{node.name}")  # the daemon only; pods keep running
    try:
        down = eventually(lambda: (c := ready_condition(admin)) and c.status == "False" and c, 30, "Ready=False")
        assert down.reason == "KubeletNotReady"
        assert "container runtime is down" in down.message
    finally:
        containerd.start(node)
    eventually(lambda: (c := ready_condition(admin)) and c.status == "True", 30, "Ready again")
    assert joiner["agent"].running()


def test_client_certificate_rotation_uses_the_nodes_own_credentials(joiner, admin):
    import asyncio

    from pykubelet.node import certificates
    from pykubelet.apiclient import Api

    eventually(lambda: ready_condition(admin), 60, "the node to register")
    pki = joiner["dir"] / "pki"
    before = (pki / certificates.CURRENT).resolve()

    async def rotate():
        api = Api(joiner["dir"] / "kubelet.conf")
        try:
            new = await certificates.rotate(api.http, pki, NAME)
            await api.reload()
            return new, (await api.json("GET", f"/api/v1/nodes/{NAME}"))["metadata"]["name"]
        finally:
            await api.close()

    time.sleep(1.1)  # a new file name: they are stamped to the second
    new, seen = asyncio.run(rotate())
    assert seen == NAME  # the new certificate authenticates
    assert (pki / certificates.CURRENT).resolve() == new.path != before
    old = x509.load_pem_x509_certificate(before.read_bytes())
    renewed = x509.load_pem_x509_certificate(new.path.read_bytes())
    assert renewed.serial_number != old.serial_number
    assert renewed.subject == old.subject
