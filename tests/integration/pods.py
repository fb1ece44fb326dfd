"""Helpers for tests that run pods on the local cluster: pod specs and waits."""

from __future__ import annotations

import time

from lightkube.resources.core_v1 import Pod

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.37.0-1"


def make_pod(node, namespace, name, containers, **spec):
    return Pod.from_dict({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node.name}, "terminationGracePeriodSeconds": 5,
                 "containers": containers, **spec},
    })


def container(name="main", command=None, **extra):
    return {"name": name, "image": BUSYBOX, "command": command or ["sleep", "3600"], **extra}


def wait_pod(admin, namespace, name, predicate, timeout=60, what="the pod"):
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        try:
            pod = admin.get(Pod, name, namespace=namespace)
        except Exception:  # noqa: BLE001
            pod = None
        if pod is not None and predicate(pod):
            return pod
        time.sleep(0.5)
    status = pod.status.to_dict() if pod is not None and pod.status else None
    raise AssertionError(f"timed out waiting for {what}; last status: {status}")


def wait_gone(admin, namespace, name, timeout=30, what="the pod to leave the API"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.get(Pod, name, namespace=namespace)
        except Exception:  # noqa: BLE001 - gone
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
