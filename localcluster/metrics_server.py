"""metrics-server in the local cluster, as a test fixture for `kubectl top` against pykubelet's /metrics/resource.

Not part of `up`: `deploy()` builds metrics-server from its Go module at the release
pinned in localcluster/upstream/metrics-server/go.mod, makes its image, imports it
into every node's containerd, applies upstream's manifests (v0.8.0's
manifests/base with the release image) and waits until the apiserver reports the
metrics.k8s.io APIService Available; `remove()` deletes all of it again. Run both
by hand with `python -m localcluster metrics-server [--remove]`.

Two changes to upstream's arguments, both towards verification rather than away:
metrics-server scrapes the kubelets at their InternalIP only (the address their
serving certificates name), and verifies those certificates against the cluster CA
(`--kubelet-certificate-authority`) instead of `--kubelet-insecure-tls`. The
kubelets' serving certificates come from kubelet-serving CSRs that
kube-controller-manager signs with the cluster CA (see bootstrap.py), and that CA
is the `ca.crt` every pod's service-account volume carries (the kube-root-ca.crt
ConfigMap, from --root-ca-file), so no extra volume is needed. The apiserver's own
hop to metrics-server stays as upstream ships it (`insecureSkipTLSVerify` on the
APIService), since metrics-server makes a self-signed serving certificate at start.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from . import images, procs
from .procs import UpError
from .settings import METRICS_SERVER_DIR, Cluster

NAMESPACE = "kube-system"
NAME = "metrics-server"
APISERVICE = "v1beta1.metrics.k8s.io"
LABELS = {"k8s-app": NAME}  # upstream's kustomization puts this on every object
# Where the service-account volume puts the cluster CA in every pod (upstream's fixed path).
SERVICE_ACCOUNT_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
BUILD_SCRIPT = METRICS_SERVER_DIR / "build.sh"


def build(cluster: Cluster) -> None:
    """Build the binary into the cache unless it is there for this go.sum (a cold build takes minutes)."""
    proc = subprocess.run([str(BUILD_SCRIPT)], env={**os.environ, "PYNODE_CACHE": str(cluster.cache)})
    if proc.returncode != 0:
        raise UpError(f"metrics-server: the build failed (exit {proc.returncode}); its output is above")


def import_image(cluster: Cluster) -> str:
    """Make the image from the built binary and import it into every node's containerd; returns its name."""
    image = images.metrics_server_image(cluster)
    archive = images.build(image, cluster.images)
    for node in cluster.nodes:
        images.import_archive(archive, node)
    return image.names[0]


def _meta(name: str, namespace: str | None = None, labels: dict[str, str] | None = None) -> dict:
    return {"name": name, **({"namespace": namespace} if namespace else {}), "labels": {**LABELS, **(labels or {})}}


def _account() -> list[dict]:
    return [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]


def _rbac(kind: str, name: str, role_kind: str, role: str, namespace: str | None = None) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": _account()}


def args() -> list[str]:
    return [
        "--cert-dir=/tmp",
        "--secure-port=10250",
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port",
        "--metric-resolution=15s",
        f"--kubelet-certificate-authority={SERVICE_ACCOUNT_CA}",
    ]


def manifests(image: str) -> list[dict]:
    """Upstream's manifests/base of the pinned release, with the arguments above; the APIService last."""
    aggregate = {f"rbac.authorization.k8s.io/aggregate-to-{r}": "true" for r in ("view", "edit", "admin")}
    probe = lambda path, **extra: {"httpGet": {"path": path, "port": "https", "scheme": "HTTPS"},  # noqa: E731
                                   "periodSeconds": 10, "failureThreshold": 3, **extra}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, NAMESPACE)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("system:aggregated-metrics-reader", labels=aggregate),
         "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta("system:metrics-server"),
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        _rbac("RoleBinding", "metrics-server-auth-reader", "Role", "extension-apiserver-authentication-reader",
              NAMESPACE),
        _rbac("ClusterRoleBinding", "metrics-server:system:auth-delegator", "ClusterRole", "system:auth-delegator"),
        _rbac("ClusterRoleBinding", "system:metrics-server", "ClusterRole", "system:metrics-server"),
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(NAME, NAMESPACE),
         "spec": {"selector": LABELS, "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                                 "targetPort": "https", "appProtocol": "https"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME, NAMESPACE),
         "spec": {
             "selector": {"matchLabels": LABELS},
             "strategy": {"rollingUpdate": {"maxUnavailable": 0}},
             "template": {"metadata": {"labels": LABELS}, "spec": {
                 "serviceAccountName": NAME,
                 "priorityClassName": "system-cluster-critical",
                 "nodeSelector": {"kubernetes.io/os": "linux"},
                 # mount in tmp so we can safely use from-scratch images and/or read-only containers
                 "volumes": [{"name": "tmp-dir", "emptyDir": {}}],
                 "containers": [{
                     "name": NAME, "image": image, "imagePullPolicy": "IfNotPresent", "args": args(),
                     "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}},
                     "ports": [{"name": "https", "containerPort": 10250, "protocol": "TCP"}],
                     "readinessProbe": probe("/readyz", initialDelaySeconds=20),
                     "livenessProbe": probe("/livez"),
                     "securityContext": {"readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": 1000,
                                         "allowPrivilegeEscalation": False,
                                         "seccompProfile": {"type": "RuntimeDefault"},
                                         "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [{"name": "tmp-dir", "mountPath": "/tmp"}],
                 }],
             }},
         }},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": _meta(APISERVICE),
         "spec": {"service": {"name": NAME, "namespace": NAMESPACE}, "group": "metrics.k8s.io",
                  "version": "v1beta1", "insecureSkipTLSVerify": True, "groupPriorityMinimum": 100,
                  "versionPriority": 100}},
    ]


def apply(cluster: Cluster, image: str) -> None:
    applied = procs.kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests(image), sort_keys=False))
    if applied.returncode != 0:
        raise UpError(f"metrics-server: kubectl apply failed: {applied.stderr.strip()}")


def available(cluster: Cluster) -> tuple[bool, str]:
    """Whether the apiserver reports the APIService Available, and its condition's reason and message."""
    got = procs.kubectl(cluster, "get", "apiservice", APISERVICE, "-o", "json", timeout=30)
    if got.returncode != 0:
        return False, got.stderr.strip()
    conditions = (json.loads(got.stdout).get("status") or {}).get("conditions") or []
    condition = next((c for c in conditions if c.get("type") == "Available"), {})
    return condition.get("status") == "True", f"{condition.get('reason')}: {condition.get('message')}"


def diagnostics(cluster: Cluster) -> str:
    """The fixture's pods and the last lines metrics-server logged, for an error message."""
    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
    pods = procs.kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "wide", timeout=30)
    logs = procs.kubectl(cluster, "-n", NAMESPACE, "logs", f"deployment/{NAME}", "--tail=30", timeout=30)
    return f"{pods.stdout}{pods.stderr}\nlogs:\n{logs.stdout}{logs.stderr}"


def wait_available(cluster: Cluster, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        ok, state = available(cluster)
        if ok:
            return
        time.sleep(2)
    raise UpError(f"metrics-server: APIService {APISERVICE} not Available within {timeout:.0f}s ({state})\n"
                  + diagnostics(cluster))


AGGREGATOR_ROUTING = "--enable-aggregator-routing=true"


def check_apiserver(cluster: Cluster) -> None:
    """The running kube-apiserver must dial the APIService's pod rather than its ClusterIP (which the host
    holds unreachable); one started before controlplane.py passed the flag lacks it until restarted."""
    pid = procs.running(cluster, "kube-apiserver")
    if pid is None:
        raise UpError("metrics-server: kube-apiserver is not running; start the cluster first (make up)")
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError as err:
        raise UpError(f"metrics-server: cannot read kube-apiserver's command line: {err}") from err
    if AGGREGATOR_ROUTING not in argv:
        raise UpError(f"metrics-server: the running kube-apiserver (pid {pid}) was started without "
                      f"{AGGREGATOR_ROUTING}, so it cannot reach metrics-server; restart the cluster "
                      "(make down && make up) to start it with the current flags")


def deploy(cluster: Cluster, timeout: float = 180) -> None:
    """Build, import, apply and wait for the APIService; safe to repeat (every step keeps what is done)."""
    check_apiserver(cluster)
    build(cluster)
    apply(cluster, import_image(cluster))
    wait_available(cluster, timeout)


def remove(cluster: Cluster, timeout: float = 90, keep_image: bool = False) -> None:
    """Delete every object deploy() applied (APIService first, so discovery stops asking for it), wait
    until the pods are gone, then drop the image from the nodes unless `keep_image` (the archive and
    the binary stay in the cache)."""
    name = images.metrics_server_name(cluster)
    docs = yaml.safe_dump_all(list(reversed(manifests(name))), sort_keys=False)
    deleted = procs.kubectl(cluster, "delete", "--ignore-not-found", "--cascade=foreground", "--wait=true",
                            f"--timeout={timeout:.0f}s",
                            "-f", "-", stdin=docs, timeout=timeout + 30)
    if deleted.returncode != 0:
        raise UpError(f"metrics-server: kubectl delete failed: {deleted.stderr.strip()}")
    selector = ",".join(f"{k}={v}" for k, v in LABELS.items())
    gone = procs.kubectl(cluster, "-n", NAMESPACE, "wait", "--for=delete", "pod", "-l", selector,
                         f"--timeout={timeout:.0f}s", timeout=timeout + 30)
    if gone.returncode != 0 and "no matching resources" not in gone.stderr:
        raise UpError(f"metrics-server: its pods did not go away: {gone.stderr.strip()}")
    if not keep_image:
        for node in cluster.nodes:
            if procs.running(cluster, f"containerd-{node.name}"):
                images.remove_image(name, node)
