"""The kubelet's Prometheus metrics: /metrics and /metrics/probes, with upstream's names, help texts, labels
and buckets (Kubernetes v1.36: pkg/kubelet/metrics, pkg/kubelet/prober, pkg/kubelet/certificate,
component-base's rest client metrics), the ``[ALPHA] ``/``[BETA] `` markers as component-base writes them.

One `KubeletMetrics` per kubelet holds every metric object and both registries; `Kubelet` makes it and
hands it to the managers that record into it (the CRI client's observer, the PLEG, the pod workers, the
runtime manager, the probes, certificate rotation, the apiserver client). Gauges about what runs are
computed at scrape time from the PLEG's and the pod workers' views.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from cri import api
from nodeagent.metrics import UsedFamilies, bare_counter, exposition

from . import timestamps

# prometheus/client_golang's DefBuckets (prometheus_client's default has three more).
DEF_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
POD_STARTUP_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200,
                       1800, 2700, 3600)


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """client_golang's ExponentialBuckets, multiplied step by step as it does (so the floats match)."""
    buckets = []
    for _ in range(count):
        buckets.append(start)
        start *= factor
    return tuple(buckets)


RUNTIME_BUCKETS = exponential_buckets(.005, 2.5, 14)
REST_LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
ROTATION_BUCKETS = (60, 3600, 14400, 86400, 604800, 2592000, 7776000, 15552000, 31104000, 124416000)
PROBE_TYPES = {"liveness": "Liveness", "readiness": "Readiness", "startup": "Startup"}

__all__ = ["KubeletMetrics", "exposition"]


def _alpha(kind, name: str, help: str, labels=(), **kw):
    return kind(name, f"[ALPHA] {help}", labels, registry=None, **kw)


class _ViewCollector:
    """Gauges computed at scrape time: running pods and containers (PLEG), desired and active pods (workers)."""

    def __init__(self):
        self.runtime_pods: Callable[[], list] = list  # () -> [(uid, PodRuntime)]
        self.workers: Callable[[], list] | None = None  # () -> [PodWorker]
        self.volume_stats: Callable[[], list] = list  # () -> [volume stats with a pvcRef] (stats summary)

    def describe(self):
        return []

    def collect(self):
        pods = GaugeMetricFamily("kubelet_running_pods", "[ALPHA] Number of pods that have a running pod sandbox")
        containers = GaugeMetricFamily("kubelet_running_containers", "[ALPHA] Number of containers currently running",
                                       labels=["container_state"])
        states = {"created": 0, "running": 0, "exited": 0, "unknown": 0}
        names = {api.CONTAINER_CREATED: "created", api.CONTAINER_RUNNING: "running",
                 api.CONTAINER_EXITED: "exited"}
        ready = 0
        for _uid, rt in self.runtime_pods():
            ready += any(s.state == api.SANDBOX_READY for s in rt.sandboxes)
            for container in rt.containers:
                states[names.get(container.state, "unknown")] += 1
        pods.add_metric([], ready)
        for state, count in states.items():
            containers.add_metric([state], count)
        families = [pods, containers]
        if self.workers is not None:
            desired = GaugeMetricFamily(
                "kubelet_desired_pods", "[ALPHA] The number of pods the kubelet is being instructed to run. static is "
                "true if the pod is not from the apiserver.", labels=["static"])
            active = GaugeMetricFamily(
                "kubelet_active_pods", "[ALPHA] The number of pods the kubelet considers active and which are being "
                "considered when admitting new pods. static is true if the pod is not from the apiserver.",
                labels=["static"])
            counts = {("desired", ""): 0, ("desired", "true"): 0, ("active", ""): 0, ("active", "true"): 0}
            for worker in self.workers():
                if worker.removed:
                    continue  # no longer in the kubelet's configuration, only being torn down
                static = "true" if worker.static else ""
                counts["desired", static] += 1
                counts["active", static] += worker.terminal_status is None
            for static in ("", "true"):
                desired.add_metric([static], counts["desired", static])
                active.add_metric([static], counts["active", static])
            families += [active, desired]
        families += self._volume_families()
        return sorted(families, key=lambda f: f.name)

    def _volume_families(self) -> list:
        """kubelet_volume_stats_*: each PersistentVolumeClaim a pod mounts, once (upstream's volumeStatsCollector)."""
        fields = (("capacity_bytes", "capacityBytes", "Capacity in bytes of the volume"),
                  ("available_bytes", "availableBytes", "Number of available bytes in the volume"),
                  ("used_bytes", "usedBytes", "Number of used bytes in the volume"),
                  ("inodes", "inodes", "Maximum number of inodes in the volume"),
                  ("inodes_free", "inodesFree", "Number of free inodes in the volume"),
                  ("inodes_used", "inodesUsed", "Number of used inodes in the volume"))
        families = [GaugeMetricFamily(f"kubelet_volume_stats_{name}", f"[ALPHA] {help}",
                                      labels=["namespace", "persistentvolumeclaim"]) for name, _, help in fields]
        seen = set()
        for stats in self.volume_stats():
            ref = (stats["pvcRef"]["namespace"], stats["pvcRef"]["name"])
            if ref in seen:
                continue
            seen.add(ref)
            for family, (_, key, _) in zip(families, fields):
                if key in stats:
                    family.add_metric(list(ref), stats[key])
        return [f for f in families if f.samples]


class CertificateMetrics:
    """What a certificate's rotation loop reports: the certificate in use, failed renewals, rotations."""

    def __init__(self, ttl: Gauge, errors: Counter, rotation: Histogram | None = None, clock=time.time):
        self.errors, self.rotation, self._clock = errors, rotation, clock
        self.not_after: float | None = None  # of the certificate in use; None: none (the TTL is +Inf)
        ttl.set_function(self.ttl)

    def ttl(self) -> float:
        return math.inf if self.not_after is None else float(math.trunc(self.not_after - self._clock()))

    def current(self, cert) -> None:
        """`cert` (a certificates.ClientCert, or None) is the one in use now."""
        self.not_after = cert.not_after.timestamp() if cert is not None else None

    def renew_failed(self) -> None:
        self.errors.inc()

    def rotated(self, previous) -> None:
        """A new certificate replaced `previous` (observed: how long it had lived)."""
        if self.rotation is not None and previous is not None:
            self.rotation.observe(max(self._clock() - previous.not_before.timestamp(), 0.0))


class PodStartup:
    """kubelet_pod_start_sli_duration_seconds and _total_duration_seconds, as upstream's startup latency tracker.

    A pod is tracked from the first time the watch shows it without a startTime (new to any kubelet), and
    observed once the watch shows it Running with every container running: creation → that moment, and for
    the SLI less the time spent pulling its images and running its init containers; pods with volumes
    other than secrets, config maps, downward API, emptyDir and projected ones get no SLI sample.
    """

    def __init__(self, sli: Histogram, total: Histogram):
        self.sli, self.total = sli, total
        self.pods: dict[str, dict] = {}  # uid -> {"pulling": seconds, "recorded": bool}

    def image_pulled(self, uid: str, seconds: float) -> None:
        state = self.pods.get(uid)
        if state is not None:
            state["pulling"] += seconds

    def forget(self, uid: str) -> None:
        self.pods.pop(uid, None)

    def observed_on_watch(self, pod: dict, when: float | None = None) -> None:
        parse = timestamps.parse
        uid, status = pod["metadata"]["uid"], pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            self.pods.pop(uid, None)
            return
        state = self.pods.get(uid)
        if state is None:
            if not status.get("startTime"):
                self.pods[uid] = {"pulling": 0.0, "recorded": False}
            return
        if state["recorded"] or status.get("phase") != "Running":
            return
        if not all((cs.get("state") or {}).get("running", {}).get("startedAt")
                   for cs in status.get("containerStatuses") or []):
            return
        created = parse(pod["metadata"].get("creationTimestamp"))
        if created is None:
            return
        total = (time.time() if when is None else when) - created
        init = 0.0
        for cs in status.get("initContainerStatuses") or []:
            done = (cs.get("state") or {}).get("terminated") or {}
            began, ended = parse(done.get("startedAt")), parse(done.get("finishedAt"))
            if began is not None and ended is not None:
                init += max(ended - began, 0.0)
        self.total.observe(total)
        if not _stateful(pod):
            self.sli.observe(total - state["pulling"] - init)
        state["recorded"] = True


def _stateful(pod: dict) -> bool:
    stateless = {"secret", "configMap", "downwardAPI", "emptyDir", "projected"}
    return any(not stateless & set(volume) for volume in pod["spec"].get("volumes") or [])


class KubeletMetrics:
    def __init__(self, node_name: str, *, client_rotation: bool = False, serving_bootstrap: bool = False):
        self.view = _ViewCollector()
        self.node_name = _alpha(Gauge, "kubelet_node_name", "The node's name. The count is always 1.", ["node"])
        self.node_name.labels(node_name).set(1)

        # The container runtime: every CRI call (pkg/kubelet/kuberuntime/instrumented_services.go).
        self.runtime_operations = _alpha(Counter, "kubelet_runtime_operations_total",
                                         "Cumulative number of runtime operations by operation type.",
                                         ["operation_type"])
        self.runtime_operations_errors = _alpha(Counter, "kubelet_runtime_operations_errors_total",
                                                "Cumulative number of runtime operation errors by operation type.",
                                                ["operation_type"])
        self.runtime_operations_duration = _alpha(
            Histogram, "kubelet_runtime_operations_duration_seconds",
            "Duration in seconds of runtime operations. Broken down by operation type.", ["operation_type"],
            buckets=RUNTIME_BUCKETS)

        # The PLEG.
        self.pleg_relist_duration = _alpha(Histogram, "kubelet_pleg_relist_duration_seconds",
                                           "Duration in seconds for relisting pods in PLEG.", buckets=DEF_BUCKETS)
        self.pleg_relist_interval = _alpha(Histogram, "kubelet_pleg_relist_interval_seconds",
                                           "Interval in seconds between relisting in PLEG.", buckets=DEF_BUCKETS)
        self.pleg_last_seen = _alpha(Gauge, "kubelet_pleg_last_seen_seconds",
                                     "Timestamp in seconds when PLEG was last seen active.")
        self.pleg_discard_events = bare_counter("kubelet_pleg_discard_events",
                                                "[ALPHA] The number of discard events in PLEG.")
        self.evictions = bare_counter("kubelet_evictions",
                                      "[ALPHA] Cumulative number of pod evictions by eviction signal",
                                      ["eviction_signal"])
        self.image_garbage_collected = _alpha(
            Counter, "kubelet_image_garbage_collected_total",
            "Total number of images garbage collected by the kubelet, whether through disk usage or image age.",
            ["reason"])
        self.pleg_last_relist: Callable[[], float] = lambda: 0.0  # monotonic start of the last good relist
        self.pleg_last_seen.set_function(self._pleg_last_seen)

        # Pods and containers.
        self.pod_worker_duration = _alpha(
            Histogram, "kubelet_pod_worker_duration_seconds",
            "Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync",
            ["operation_type"], buckets=DEF_BUCKETS)
        self.pod_start_duration = _alpha(
            Histogram, "kubelet_pod_start_duration_seconds",
            "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            buckets=POD_STARTUP_BUCKETS)
        self.pod_start_sli_duration = _alpha(
            Histogram, "kubelet_pod_start_sli_duration_seconds",
            "Duration in seconds to start a pod, excluding time to pull images and run init containers, measured "
            "from pod creation timestamp to when all its containers are reported as started and observed via watch",
            buckets=POD_STARTUP_BUCKETS)
        self.pod_start_total_duration = _alpha(
            Histogram, "kubelet_pod_start_total_duration_seconds",
            "Duration in seconds to start a pod since creation, including time to pull images and run init "
            "containers, measured from pod creation timestamp to when all its containers are reported as started "
            "and observed via watch", buckets=POD_STARTUP_BUCKETS)
        self.started_pods = _alpha(Counter, "kubelet_started_pods_total", "Cumulative number of pods started")
        self.started_pods_errors = _alpha(Counter, "kubelet_started_pods_errors_total",
                                          "Cumulative number of errors when starting pods")
        self.started_containers = _alpha(Counter, "kubelet_started_containers_total",
                                         "Cumulative number of containers started", ["container_type"])
        self.started_containers_errors = _alpha(Counter, "kubelet_started_containers_errors_total",
                                                "Cumulative number of errors when starting containers",
                                                ["container_type", "code"])
        self.pod_startup = PodStartup(self.pod_start_sli_duration, self.pod_start_total_duration)

        # The apiserver client (client-go's rest client metrics, as component-base registers them).
        self.rest_requests = _alpha(Counter, "rest_client_requests_total",
                                    "Number of HTTP requests, partitioned by status code, method, and host.",
                                    ["code", "method", "host"])
        self.rest_request_duration = _alpha(Histogram, "rest_client_request_duration_seconds",
                                            "Request latency in seconds. Broken down by verb, and host.",
                                            ["verb", "host"], buckets=REST_LATENCY_BUCKETS)

        metrics = [self.node_name, self.runtime_operations, self.runtime_operations_errors,
                   self.runtime_operations_duration, self.pleg_relist_duration, self.pleg_relist_interval,
                   self.pleg_last_seen, self.pleg_discard_events, self.pod_worker_duration, self.pod_start_duration,
                   self.pod_start_sli_duration, self.pod_start_total_duration, self.started_pods,
                   self.started_pods_errors, self.started_containers, self.started_containers_errors,
                   self.rest_requests, self.rest_request_duration, self.evictions, self.image_garbage_collected]

        # Certificates: registered, as upstream, only when a certificate manager runs for them.
        self.client_certificate = self.serving_certificate = None
        if client_rotation:
            ttl = _alpha(Gauge, "kubelet_certificate_manager_client_ttl_seconds",
                         "Gauge of the TTL (time-to-live) of the Kubelet's client certificate. The value is in "
                         "seconds until certificate expiry (negative if already expired). If client certificate is "
                         "invalid or unused, the value will be +INF.")
            errors = bare_counter("kubelet_certificate_manager_client_expiration_renew_errors",
                                  "[ALPHA] Counter of certificate renewal errors.")
            self.client_certificate = CertificateMetrics(ttl, errors)
            metrics += [ttl, errors]
        if serving_bootstrap:
            ttl = _alpha(Gauge, "kubelet_certificate_manager_server_ttl_seconds",
                         "Gauge of the shortest TTL (time-to-live) of the Kubelet's serving certificate. The value "
                         "is in seconds until certificate expiry (negative if already expired). If serving "
                         "certificate is invalid or unused, the value will be +INF.")
            errors = bare_counter("kubelet_server_expiration_renew_errors",
                                  "[ALPHA] Counter of certificate renewal errors.")
            rotation = _alpha(Histogram, "kubelet_certificate_manager_server_rotation_seconds",
                              "Histogram of the number of seconds the previous certificate lived before being "
                              "rotated.", buckets=ROTATION_BUCKETS)
            self.serving_certificate = CertificateMetrics(ttl, errors, rotation)
            metrics += [ttl, errors, rotation]

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(UsedFamilies([*metrics, self.view, ProcessCollector(registry=None)]))

        # /metrics/probes (pkg/kubelet/prober/prober_manager.go, served by pkg/kubelet/server).
        self.probe_total = Counter(
            "prober_probe_total", "[BETA] Cumulative number of a liveness, readiness or startup probe for a "
            "container by result.", ["probe_type", "result", "container", "pod", "namespace", "pod_uid"],
            registry=None)
        self.probe_duration = _alpha(Histogram, "prober_probe_duration_seconds", "Duration in seconds for a probe "
                                     "response.", ["probe_type", "container", "pod", "namespace"],
                                     buckets=DEF_BUCKETS)
        start = _alpha(Gauge, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.")
        start.set(psutil.Process().create_time())
        self.probes_registry = CollectorRegistry(auto_describe=False)
        self.probes_registry.register(UsedFamilies([self.probe_duration, self.probe_total, start]))

    def watch(self, *, runtime_pods: Callable[[], list], last_relist: Callable[[], float],
              workers: Callable[[], list], volume_stats: Callable[[], list] = list) -> None:
        """Where the scrape-time gauges look: the PLEG's pods and last relist, the pod workers, the claims'
        volume stats."""
        self.view.runtime_pods, self.view.workers, self.pleg_last_relist = runtime_pods, workers, last_relist
        self.view.volume_stats = volume_stats

    def _pleg_last_seen(self) -> float:
        started = self.pleg_last_relist()
        if not started:
            return 0.0
        return float(int(time.time() - (time.monotonic() - started)))  # whole seconds, as upstream's .Unix()

    # ------------------------------------------------------------------ recorders

    def runtime_operation(self, operation: str, seconds: float, error: BaseException | None) -> None:
        """The CRI client's observer."""
        self.runtime_operations.labels(operation).inc()
        self.runtime_operations_duration.labels(operation).observe(seconds)
        if error is not None:
            self.runtime_operations_errors.labels(operation).inc()

    def rest_request(self, method: str, host: str, code: int | None, seconds: float) -> None:
        """The apiserver client's observer; `code` None: no response (client-go's "<error>")."""
        self.rest_requests.labels("<error>" if code is None else str(code), method, host).inc()
        self.rest_request_duration.labels(method, host).observe(seconds)

    def pleg_relisted(self, seconds: float, interval: float | None) -> None:
        """A relist (good or failed) took `seconds`, `interval` after the start of the last good one (None: first)."""
        if interval is not None:
            self.pleg_relist_interval.observe(interval)
        self.pleg_relist_duration.observe(seconds)

    def probed(self, kind: str, result: str, seconds: float, pod: dict, container: str) -> None:
        """A finished probe; `result` "successful" or "failed" (upstream throws errored probes away)."""
        meta = pod["metadata"]
        probe_type = PROBE_TYPES[kind]
        self.probe_total.labels(probe_type, result, container, meta["name"], meta["namespace"], meta["uid"]).inc()
        if result == "successful":
            self.probe_duration.labels(probe_type, container, meta["name"], meta["namespace"]).observe(seconds)

    def probe_stopped(self, kind: str, pod: dict, container: str) -> None:
        """A probe worker ended: its series go, as upstream deletes them."""
        meta = pod["metadata"]
        probe_type = PROBE_TYPES[kind]
        for result in ("successful", "failed", "unknown"):
            try:
                self.probe_total.remove(probe_type, result, container, meta["name"], meta["namespace"], meta["uid"])
            except KeyError:
                pass
        try:
            self.probe_duration.remove(probe_type, container, meta["name"], meta["namespace"])
        except KeyError:
            pass
