"""A conformance smoke: upstream [Conformance] specs pynode passes (sig-node, sig-storage, sig-network and two
that check the harness's own images), fast ones, run by the real e2e suite.

`make conformance` is the measurement; this keeps what it found passing from regressing in CI. Each spec
here takes seconds on one pynode node; the whole run (suite build cached) well under a minute.
"""

from __future__ import annotations

import json

import pytest

from localcluster import conformance

pytestmark = pytest.mark.integration

SPECS = [
    "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
    "[sig-node] Pods should be updated [NodeConformance] [Conformance]",
    "[sig-node] Pods should support remote command execution over websockets [NodeConformance] [Conformance]",
    "[sig-node] Pods should support retrieving logs from the container over websockets [NodeConformance] "
    "[Conformance]",
    "[sig-node] Pods should contain environment variables for services [NodeConformance] [Conformance]",
    "[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs "
    "[NodeConformance] [Conformance]",
    "[sig-node] Kubelet when scheduling a busybox command that always fails in a pod should have an terminated "
    "reason [NodeConformance] [Conformance]",
    "[sig-node] Kubelet when scheduling a read only busybox container should not write to root filesystem "
    "[LinuxOnly] [NodeConformance] [Conformance]",
    "[sig-node] Kubelet when scheduling an agnhost Pod with hostAliases should write entries to /etc/hosts "
    "[NodeConformance] [Conformance]",
    "[sig-node] KubeletManagedEtcHosts should test kubelet managed /etc/hosts file [NodeConformance] [Conformance]",
    "[sig-node] Container Runtime blackbox test on terminated container should report termination message from "
    "log output if TerminationMessagePolicy FallbackToLogsOnError is set [NodeConformance] [Conformance]",
    "[sig-node] Containers should be able to override the image's default command and arguments "
    "[NodeConformance] [Conformance]",
    "[sig-node] Downward API should provide pod name, namespace and IP address as env vars [NodeConformance] "
    "[Conformance]",
    "[sig-node] Downward API should provide container's limits.cpu/memory and requests.cpu/memory as env vars "
    "[NodeConformance] [Conformance]",
    "[sig-node] Secrets should be consumable from pods in env vars [NodeConformance] [Conformance]",
    "[sig-node] Variable Expansion should allow composing env vars into new env vars [NodeConformance] "
    "[Conformance]",
    "[sig-node] Security Context should support pod.Spec.SecurityContext.RunAsUser And "
    "pod.Spec.SecurityContext.RunAsGroup [LinuxOnly] [Conformance]",
    "[sig-node] Sysctls [LinuxOnly] [NodeConformance] should support sysctls [Environment:NotInUserNS] "
    "[Conformance]",
    "[sig-node] InitContainer [NodeConformance] should invoke init containers on a RestartNever pod [Conformance]",
    "[sig-node] InitContainer [NodeConformance] should not start app containers and fail the pod if init "
    "containers fail on a RestartNever pod [Conformance]",
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart http hook "
    "properly [NodeConformance] [Conformance]",
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart exec hook "
    "properly [NodeConformance] [Conformance]",
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute prestop exec hook "
    "properly [NodeConformance] [Conformance]",
    "[sig-node] Container Lifecycle Hook when create a pod with lifecycle hook should execute prestop http hook "
    "properly [NodeConformance] [Conformance]",
    "[sig-node] ConfigMap should be consumable via the environment [NodeConformance] [Conformance]",
    "[sig-node] ConfigMap should be consumable as environment variable names with various prefixes [Conformance]",
    "[sig-node] Secrets should be consumable via the environment [NodeConformance] [Conformance]",
    "[sig-node] Ephemeral Containers [NodeConformance] will start an ephemeral container in an existing pod "
    "[Conformance]",
    "[sig-node] Ephemeral Containers [NodeConformance] should update the ephemeral containers in an existing pod "
    "[Conformance]",
    "[sig-node] Pods should run through the lifecycle of Pods and PodStatus [Conformance]",
    "[sig-node] Variable Expansion should allow substituting values in a volume subpath [Conformance]",
    "[sig-node] Variable Expansion should fail substituting values in a volume subpath with absolute path "
    "[Conformance]",
    "[sig-node] Variable Expansion should fail substituting values in a volume subpath with backticks "
    "[Conformance]",
    "[sig-node] Pod InPlace Resize Container resize pod via the replace endpoint [MinimumKubeletVersion:1.34] "
    "[Conformance]",
    "[sig-node] Pod InPlace Resize Container burstable pods - extended resize with equivalents "
    "[MinimumKubeletVersion:1.34] [Conformance]",
    "[sig-storage] ConfigMap should be consumable from pods in volume with mappings and Item mode set [LinuxOnly] "
    "[NodeConformance] [Conformance]",
    "[sig-storage] ConfigMap updates should be reflected in volume [NodeConformance] [Conformance]",
    "[sig-storage] ConfigMap binary data should be reflected in volume [NodeConformance] [Conformance]",
    "[sig-storage] Secrets optional updates should be reflected in volume [NodeConformance] [Conformance]",
    "[sig-storage] Secrets should be consumable from pods in volume as non-root with defaultMode and fsGroup set "
    "[LinuxOnly] [NodeConformance] [Conformance]",
    "[sig-storage] Downward API volume should update labels on modification [NodeConformance] [Conformance]",
    "[sig-storage] Downward API volume should provide node allocatable (memory) as default memory limit if the "
    "limit is not set [NodeConformance] [Conformance]",
    "[sig-storage] Projected combined should project all components that make up the projection API [Projection] "
    "[NodeConformance] [Conformance]",
    "[sig-storage] EmptyDir volumes volume on tmpfs should have the correct mode [LinuxOnly] [NodeConformance] "
    "[Conformance]",
    "[sig-storage] EmptyDir volumes should support (non-root,0666,tmpfs) [LinuxOnly] [NodeConformance] "
    "[Conformance]",
    "[sig-storage] EmptyDir wrapper volumes should not conflict [Conformance]",
    "[sig-storage] Subpath Atomic writer volumes should support subpaths with configmap pod [Conformance]",
    # pyproxy, CoreDNS, and the images' nc (with -t), dig and getent
    "[sig-network] DNS should provide DNS for services [Conformance]",
    "[sig-network] Services should be able to create a functioning NodePort service [Conformance]",
    "[sig-network] Services should have session affinity work for service with type clusterIP [LinuxOnly] "
    "[Conformance]",
    # the nginx image; sample-apiserver and etcd, reached by the apiserver through the host's route to the pod
    "[sig-apps] ReplicationController should test the lifecycle of a ReplicationController [Conformance]",
    "[sig-api-machinery] Aggregator Should be able to support the 1.17 Sample API Server using the current "
    "Aggregator [LinuxOnly] [Conformance]",
]


@pytest.mark.timeout(900)  # about a minute on a quiet machine; a busy one (QEMU VMs beside it) took over 5
def test_the_smoke_specs_pass_on_pynode_nodes(cluster):
    conformance.build(cluster)
    out = conformance.measure(cluster, conformance.exact(SPECS), processes=4)
    summary = conformance.summarize(json.loads((out / "report.json").read_text()))
    failed = "\n".join(f"{text}\n    {line}" for text, line in summary.failures)
    assert not summary.failures, f"failed specs (ginkgo output in {out}):\n{failed}"
    assert sorted(summary.passed) == sorted(SPECS)  # every one ran: a renamed spec is not silently dropped
