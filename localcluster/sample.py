"""A small workload `up` runs on the local node, so that a fresh cluster shows pods Running.

A Deployment of two busybox web servers with a readiness probe and a NodePort
Service in front of them, in namespace `pynode-sample`: scheduled by the real
scheduler, run by pykubelet, reached through pyproxy's rules.
"""

from __future__ import annotations

import time
import urllib.request

import yaml

from . import procs
from .procs import UpError
from .settings import Cluster

NAMESPACE = "pynode-sample"
NODE_PORT = 30080


def manifests(image: str) -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "hello", "namespace": NAMESPACE},
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "hello"}},
                  "template": {"metadata": {"labels": {"app": "hello"}},
                               "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                                   "name": "web", "image": image,
                                   "command": ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) "
                                               "> /www/index.html && exec httpd -f -p 8080 -h /www"],
                                   "ports": [{"name": "http", "containerPort": 8080}],
                                   "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                                      "periodSeconds": 2}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello", "namespace": NAMESPACE},
         "spec": {"type": "NodePort", "selector": {"app": "hello"},
                  "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": NODE_PORT}]}},
    ]


def run(cluster: Cluster, image: str) -> str:
    """Apply the sample and wait until it is available; returns `kubectl get pods -o wide` for it."""
    applied = procs.kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests(image)))
    if applied.returncode != 0:
        raise UpError(f"sample workload: kubectl apply failed: {applied.stderr.strip()}")
    rolled = procs.kubectl(cluster, "-n", NAMESPACE, "rollout", "status", "deployment/hello", "--timeout=120s",
                           timeout=150)
    if rolled.returncode != 0:
        pods = procs.kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-o", "wide").stdout
        raise UpError(f"sample workload did not become available: {rolled.stderr.strip()}\n{pods}")
    return procs.kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-o", "wide").stdout


def through_service(node, timeout: float = 60) -> str:
    """GET the sample through its NodePort on the node's address (pyproxy's rules); the reply, or UpError
    saying what the proxy saw (the EndpointSlice's ready addresses, pyproxy's last warnings)."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{node.ip}:{NODE_PORT}/", timeout=3) as response:
                return response.read().decode().strip()
        except OSError as err:
            error = err
            time.sleep(0.5)
    slices = procs.kubectl(node.cluster, "-n", NAMESPACE, "get", "endpointslices", "-o", "wide").stdout.strip()
    raise UpError(f"sample Service did not answer on {node.ip}:{NODE_PORT} within {timeout:.0f}s: {error}\n"
                  f"its EndpointSlices:\n{slices}\n{procs.excerpt(node.cluster, f'pyproxy-{node.name}')}")
