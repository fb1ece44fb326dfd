"""The kubeadm control plane harness's pure parts: the config it hands `kubeadm init`, the image names, the CLI."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from localcluster import __main__ as cli
from localcluster import kubeadm_control_plane as kcp
from localcluster.procs import UpError

UPSTREAM_BIN = Path.home() / ".cache/pynode/upstream/v1.36.3/bin"


def docs(agents: str = "pynode") -> dict[str, dict]:
    text = kcp.kubeadm_config(node_name="pynode-m70", node_ip="10.221.0.70", version="v1.36.3", agents=agents)
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text)}


def test_the_config_is_kubeadm_v1beta4_for_the_machine():
    config = docs()
    init, cluster = config["InitConfiguration"], config["ClusterConfiguration"]
    assert init["apiVersion"] == cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert init["localAPIEndpoint"] == {"advertiseAddress": "10.221.0.70", "bindPort": 6443}
    assert init["nodeRegistration"]["name"] == "pynode-m70"
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    assert init["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]
    assert init["skipPhases"] == ["addon/kube-proxy", "addon/coredns"]
    assert cluster["kubernetesVersion"] == "v1.36.3"
    assert cluster["controlPlaneEndpoint"] == "10.221.0.70:6443"


def test_the_inner_cluster_ranges_stay_inside_the_hosts():
    networking = docs()["ClusterConfiguration"]["networking"]
    pods, services = ipaddress.ip_network(networking["podSubnet"]), ipaddress.ip_network(networking["serviceSubnet"])
    assert pods.subnet_of(ipaddress.ip_network("10.222.0.0/16"))
    assert services.subnet_of(ipaddress.ip_network("10.223.0.0/16"))
    # The controller-manager hands out /24s in order: the first is the control plane machine's CNI subnet, the
    # second the worker's.
    first, second = list(pods.subnets(new_prefix=24))[:2]
    assert (str(first), str(second)) == (kcp.CONTROL_PLANE[1], kcp.WORKER[1])


def test_the_kubelet_config_matches_the_runtime_and_only_upstream_gets_fail_cgroupv1():
    assert docs("pynode")["KubeletConfiguration"] == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", "cgroupDriver": "cgroupfs"}
    assert docs("upstream")["KubeletConfiguration"]["failCgroupV1"] is False


def test_unknown_agents_are_refused():
    with pytest.raises(UpError, match="unknown node agents"):
        kcp.kubeadm_config(node_name="n", node_ip="10.221.0.70", version="v1.36.3", agents="kind")


@pytest.mark.skipif(not (UPSTREAM_BIN / "kubeadm").is_file(), reason="kubeadm not built (python -m localcluster "
                    "build kubeadm)")
def test_kubeadm_wants_the_control_planes_images_and_pause_once_the_addons_are_left_out(tmp_path):
    """What the run must build and import: exactly these, under these names."""
    config = tmp_path / "kubeadm.yaml"
    config.write_text(kcp.kubeadm_config(node_name="pynode-m70", node_ip="10.221.0.70", version="v1.36.3"))
    cluster = type("C", (), {"bin": UPSTREAM_BIN})()
    assert kcp.kubeadm_images(cluster, config) == [
        "registry.k8s.io/etcd:3.6.8-0", "registry.k8s.io/kube-apiserver:v1.36.3",
        "registry.k8s.io/kube-controller-manager:v1.36.3", "registry.k8s.io/kube-scheduler:v1.36.3",
        "registry.k8s.io/pause:3.10.2"]


def test_a_component_image_runs_the_bare_command_from_usr_local_bin(tmp_path):
    (tmp_path / "kube-scheduler").write_bytes(b"\x7fELF")
    cluster = type("C", (), {"bin": tmp_path, "version": "v1.36.3"})()
    image = kcp.component_image(cluster, "kube-scheduler")
    assert image.names == ["registry.k8s.io/kube-scheduler:v1.36.3"]
    assert image.entrypoint == ["/usr/local/bin/kube-scheduler"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in image.env
    [binary] = [e for e in image.entries if e.path == "usr/local/bin/kube-scheduler"]
    assert binary.data == b"\x7fELF" and binary.mode == 0o755
    with pytest.raises(UpError, match="missing"):
        kcp.component_image(cluster, "kube-apiserver")


def test_report_passes_only_when_every_check_does():
    report = kcp.Report("pynode")
    assert not report.passed  # nothing checked proves nothing
    report.check("a", True)
    assert report.passed
    report.check("b", False, "why | not")
    assert not report.passed
    text = report.markdown("t")
    assert "| b | FAIL | why / not |" in text


def test_the_cli_takes_agents_keep_join_worker_and_destroy(monkeypatch):
    seen = {}

    def fake_run(config, **kw):
        seen.update(kw)
        report = kcp.Report(kw["agents"])
        report.check("x", True)
        return report

    monkeypatch.setattr(kcp, "run", fake_run)
    monkeypatch.setattr(kcp, "destroy", lambda config: seen.update(destroyed=True))
    monkeypatch.delenv("NODE_AGENTS", raising=False)
    assert cli.main(["kubeadm-control-plane"]) == 0
    assert seen == {"agents": "pynode", "keep": False, "join_worker": False}
    seen.clear()
    assert cli.main(["kubeadm-control-plane", "--agents", "upstream", "--keep", "--join-worker"]) == 0
    assert seen == {"agents": "upstream", "keep": True, "join_worker": True}
    seen.clear()
    assert cli.main(["kubeadm-control-plane", "--destroy"]) == 0
    assert seen == {"destroyed": True}
    with pytest.raises(SystemExit):
        cli.main(["kubeadm-control-plane", "--agents", "kind"])


def test_kubeadms_health_waits_are_read_from_its_output():
    output = ("[kubelet-check] Waiting for a healthy kubelet at http://127.0.0.1:10248/healthz. This can take up to 4m0s\n"
              "[kubelet-check] The kubelet is healthy after 1.3032ms\n"
              "[control-plane-check] kube-apiserver is healthy after 2.003234655s\n")
    assert kcp.health_waits(output) == {"kubeadm kubelet-check: kubelet healthy after": "1.3032ms",
                                        "kubeadm control-plane-check: kube-apiserver healthy after": "2.003234655s"}
