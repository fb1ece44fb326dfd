"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler, with kubeadm's flags."""

from __future__ import annotations

import json
import shutil
import ssl
import sys
import urllib.request

from . import procs
from .settings import Cluster

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def get(url: str, *, ca: str | None = None, cert: tuple[str, str] | None = None, timeout: float = 3) -> tuple[int, str]:
    """One HTTPS GET; returns (status, body) and never raises for an HTTP error status."""
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()  # noqa: S323
    if cert:
        ctx.load_cert_chain(*cert)
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if not path:
        raise procs.UpError("etcd: the etcd binary is missing (Debian package etcd-server)")
    return path


def _argv(cluster: Cluster, name: str) -> list[str]:
    pki = cluster.pki
    ip = cluster.host_ip
    if name == "etcd":
        return [
            etcd_binary(),
            "--name=pynode-control-plane",
            f"--data-dir={cluster.state / 'etcd'}",
            f"--listen-client-urls=https://127.0.0.1:{cluster.etcd_client_port}",
            f"--advertise-client-urls=https://127.0.0.1:{cluster.etcd_client_port}",
            f"--listen-peer-urls=https://127.0.0.1:{cluster.etcd_peer_port}",
            f"--initial-advertise-peer-urls=https://127.0.0.1:{cluster.etcd_peer_port}",
            f"--initial-cluster=pynode-control-plane=https://127.0.0.1:{cluster.etcd_peer_port}",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--client-cert-auth=true",
            f"--cert-file={pki / 'etcd/server.crt'}",
            f"--key-file={pki / 'etcd/server.key'}",
            f"--trusted-ca-file={pki / 'etcd/ca.crt'}",
            "--peer-client-cert-auth=true",
            f"--peer-cert-file={pki / 'etcd/peer.crt'}",
            f"--peer-key-file={pki / 'etcd/peer.key'}",
            f"--peer-trusted-ca-file={pki / 'etcd/ca.crt'}",
            "--snapshot-count=10000",
            # How often etcd tells the apiserver's watch cache of each resource which revision it has reached
            # when nothing changed there (etcd 3.4 names the flag experimental). A read or watch at a newer
            # resourceVersion waits up to 3 s for the cache, then fails with "Too large resource version".
            # etcd's default of 10 minutes failed such watches in the e2e suite, and kubeadm's 5 s some still:
            # kubeadm's etcd (3.5.13+, 3.6) also lets the apiserver ask for progress at once, which Debian 12's
            # 3.4.23 does not (the apiserver checks for 3.4.31+), so here it is 1 s, within the 3 s wait.
            "--experimental-watch-progress-notify-interval=1s",
        ]
    if name == "kube-apiserver":
        return [
            str(cluster.bin / name),
            f"--advertise-address={ip}",
            f"--bind-address={ip}",
            f"--secure-port={cluster.apiserver_port}",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth=true",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--etcd-servers=https://127.0.0.1:{cluster.etcd_client_port}",
            f"--etcd-cafile={pki / 'etcd/ca.crt'}",
            f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            # The kubelets' serving certificates come from CSRs the cluster CA signs: verify them.
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            # The aggregation layer, as kubeadm sets it up: the apiserver proxies aggregated APIs
            # (metrics.k8s.io) as front-proxy-client, and dials the backing pod's IP rather than its
            # Service's ClusterIP, since no kube-proxy runs on the control-plane host.
            "--enable-aggregator-routing=true",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--service-account-issuer=https://kubernetes.default.svc.{cluster.cluster_domain}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={cluster.service_cidr}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
        ]
    kubeconfig = cluster.kubeconfig("controller-manager" if name == "kube-controller-manager" else "scheduler")
    common = [
        str(cluster.bin / name),
        "--bind-address=127.0.0.1",
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--leader-elect=true",
    ]
    if name == "kube-scheduler":
        return common
    return common + [
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={cluster.pod_cidr}",
        "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={cluster.service_cidr}",
        "--cluster-name=kubernetes",
    ]


def _ports(cluster: Cluster, name: str) -> tuple[tuple[str, int], ...]:
    return {
        "etcd": (("127.0.0.1", cluster.etcd_client_port), ("127.0.0.1", cluster.etcd_peer_port),
                 ("127.0.0.1", 2381)),
        "kube-apiserver": ((cluster.host_ip, cluster.apiserver_port),),
        "kube-controller-manager": (("127.0.0.1", cluster.controller_manager_port),),
        "kube-scheduler": (("127.0.0.1", cluster.scheduler_port),),
    }[name]


def healthy(cluster: Cluster, name: str) -> bool:
    pki = cluster.pki
    if name == "etcd":
        status, body = get(f"https://127.0.0.1:{cluster.etcd_client_port}/health", ca=str(pki / "etcd/ca.crt"),
                           cert=(str(pki / "apiserver-etcd-client.crt"), str(pki / "apiserver-etcd-client.key")))
        return status == 200 and json.loads(body).get("health") == "true"
    if name == "kube-apiserver":
        return get(f"{cluster.server}/readyz", ca=str(pki / "ca.crt")) == (200, "ok")
    port = cluster.controller_manager_port if name == "kube-controller-manager" else cluster.scheduler_port
    return get(f"https://127.0.0.1:{port}/healthz") == (200, "ok")


def start(cluster: Cluster) -> None:
    """Start each component that is not running; one that runs with other flags than this checkout gives it (a
    cluster brought up before an update) is restarted with them."""
    for name in COMPONENTS:
        argv = _argv(cluster, name)
        pid = procs.running(cluster, name)
        if pid and procs.command_line(pid) not in (argv, None):
            log(f"restarting {name}: its flags differ from this checkout's")
            procs.stop(cluster, name)
        procs.start(cluster, name, argv, ports=_ports(cluster, name))
        procs.wait_healthy(cluster, name, lambda name=name: healthy(cluster, name), timeout=90)


def stop(cluster: Cluster) -> None:
    for name in reversed(COMPONENTS):
        procs.stop(cluster, name)
