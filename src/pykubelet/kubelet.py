"""pykubelet's main loop: bootstrap credentials, register, then keep status, lease and certificate fresh.

Every long-lived task is owned here and cancelled on SIGTERM; running pods are
never touched by a shutdown.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from cri import CRIClient

from nodeagent import logs, memdump, systemd
from nodeagent.listwatch import ListWatch

from . import metrics
from .apiclient import Api
from .config.kubeletconfig import KubeletConfig, parse_quantity
from .eviction import EvictionManager, signals
from .images import ImageGC
from .node import certificates, healthz, nodestatus
from .node.nodelease import NodeLease
from .node.nodemanager import NodeManager
from .pods import admission, qos, resize, servicelinks
from .pods.events import Recorder
from .pods.kuberuntime import RuntimeManager
from .pods.logrotation import LogRotation
from .pods.pleg import Pleg
from .pods.podstate import POD_NAME, POD_NAMESPACE
from .pods.podworkers import PodWorkers
from .pods.staticpods import StaticPods
from .pods.statusmanager import StatusManager
from .probes.probemanager import PodProbes
from .server import KubeletServer
from .stats import PodRef, SummaryProvider
from nodeagent.version import KUBERNETES_VERSION
from .volumes import VolumeManager

log = logs.get(__name__)

STALE_SYNC = 120.0  # /healthz fails when the status loop has not run for this long


async def reclaim_disk(workers: PodWorkers, images: ImageGC) -> None:
    """Upstream's node-level reclaim for disk pressure, in its order: the finished pods' containers, then every
    image no container uses any more (those pods' included)."""
    await workers.remove_finished_runtime()
    await images.delete_unused()


class ServerHost:
    """What the kubelet API reads from the running kubelet (see server/routes.py)."""

    def __init__(self, kubelet: "Kubelet", workers: PodWorkers, pleg: Pleg, runtime: CRIClient):
        self.config = kubelet.config
        self.healthy = kubelet.healthy
        self.workers, self.pleg, self.cri = workers, pleg, runtime
        self.metrics = kubelet.metrics
        self.registry, self.probes_registry = kubelet.metrics.registry, kubelet.metrics.probes_registry
        self.stats = kubelet.stats

    def find_pod(self, namespace: str, name: str) -> tuple[dict, dict | None] | None:
        for worker in list(self.workers.workers.values()):
            meta = worker.pod["metadata"]
            if meta.get("namespace") == namespace and meta.get("name") == name:
                return worker.pod, worker.api_view()
        return None

    def runtime(self, uid: str):
        return self.pleg.pod(uid)

    def runtime_pods(self):
        return list(self.pleg.pods.items())

    def pods(self) -> list[dict]:
        return [worker.with_api_status() for worker in list(self.workers.workers.values())]


class Kubelet:
    def __init__(self, config: KubeletConfig):
        self.config = config
        self.name = nodestatus.node_name(config.hostname_override)
        self.ip = config.node_ip or nodestatus.default_node_ip()
        self.node: NodeManager | None = None
        self.node_loop_started = False  # the node status loop runs (after registration): /healthz watches it
        self.metrics = metrics.KubeletMetrics(
            self.name, client_rotation=config.rotate_certificates,
            serving_bootstrap=config.enable_server and config.tls_cert_file is None and config.server_tls_bootstrap)

    def _stats_pods(self) -> list[tuple[PodRef, object]]:
        """The pods the runtime holds, named from the kubelet's pod (or, for one it no longer has, the labels)."""
        found = []
        for uid, rt in list(self.pleg.pods.items()):
            worker = self.workers.workers.get(uid)
            if worker is not None:
                meta = worker.pod["metadata"]
                spec = worker.pod.get("spec") or {}
                images = tuple((c.get("name", ""), c.get("image", ""))
                               for key in ("initContainers", "containers") for c in spec.get(key) or [])
                ref = PodRef(meta.get("name", ""), meta.get("namespace", ""), uid,
                             qos.pod_cgroup_parent(self.config.cgroup_root, worker.pod), images)
            elif rt.containers:
                labels = rt.containers[0].labels
                ref = PodRef(labels.get(POD_NAME, ""), labels.get(POD_NAMESPACE, ""), uid)
            else:
                continue
            found.append((ref, rt))
        return found

    def healthy(self) -> tuple[bool, str]:
        if self.node is None or not self.node_loop_started:
            return True, ""  # still starting: bootstrap and registration may wait for the apiserver
        age = time.monotonic() - self.node.last_sync
        return (age < STALE_SYNC, f"node status loop has not run for {age:.0f}s")

    async def _credentials(self) -> None:
        config = self.config
        if certificates.kubeconfig_usable(config.kubeconfig):
            return
        if config.bootstrap_kubeconfig is None:
            raise certificates.BootstrapError(
                f"no usable kubeconfig at {config.kubeconfig} and no --bootstrap-kubeconfig to obtain one")
        log.info("Starting TLS bootstrap", bootstrapKubeconfig=config.bootstrap_kubeconfig, certDir=config.cert_dir)
        await certificates.bootstrap(config.kubeconfig, config.bootstrap_kubeconfig, config.cert_dir, self.name)

    async def _rotate_certificates(self, api: Api) -> None:
        """Renew the client certificate (none when the kubeconfig holds, say, a token)."""

        async def renew() -> None:
            await certificates.rotate(api.http, self.config.cert_dir, self.name)
            await api.reload()

        await certificates.keep_renewed(self.config.cert_dir, certificates.CLIENT, renew, "Client certificate",
                                        self.metrics.client_certificate)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        memdump.install(loop)
        log.info("Starting pykubelet", version=KUBERNETES_VERSION, node=self.name, nodeIP=self.ip)
        for warning in self.config.warnings:
            log.warning(warning)

        server = await healthz.serve(self.config.healthz_bind_address, self.config.healthz_port, self.healthy)
        tasks: list[asyncio.Task] = []
        api: Api | None = None
        runtime = CRIClient(self.config.container_runtime_endpoint, timeout=self.config.runtime_request_timeout,
                            observer=self.metrics.runtime_operation)
        main = asyncio.create_task(self._start(runtime, tasks), name="start")
        try:
            stopped = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if main in done:
                api = main.result()  # raises a fatal startup error
                await stopped
            log.info("Shutting down on signal; pods keep running")
        finally:
            for task in [main, *tasks]:
                task.cancel()
            await asyncio.gather(main, *tasks, return_exceptions=True)
            server.close()
            await runtime.close()
            if api is not None:
                await api.close()
            systemd.notify("STOPPING=1")

    def _start_pods(self, api: Api, runtime: CRIClient) -> list[asyncio.Task]:
        """The pod machinery: PLEG, pod workers, status manager, events, and the pod watch."""
        node = self.node
        events = Recorder(api, self.name)
        status = StatusManager(api)

        async def get_object(kind: str, namespace: str, name: str) -> dict | None:
            response = await api.http.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
            if response.status_code in (403, 404):
                return None
            response.raise_for_status()
            return response.json()

        allocatable = nodestatus.allocatable(
            node.info, self.config.max_pods, kube_reserved=self.config.kube_reserved,
            system_reserved=self.config.system_reserved, eviction_hard=self.config.eviction_hard,
            parse_quantity=parse_quantity)
        services = servicelinks.ServiceCache()
        service_source = ListWatch(lambda: api.http, "/api/v1/services", kind="Service", parse=servicelinks.parse,
                                   replace=services.replace, update=services.update, remove=services.remove)
        workers: PodWorkers | None = None

        def wake(uids) -> None:
            for uid in uids:
                if workers is not None:
                    workers.wake(uid)

        volumes = VolumeManager(lambda: api.http, self.config.root_dir, watch_http=lambda: api.watch_http,
                                node_allocatable=allocatable, node_name=self.name, wake=wake)
        manager = RuntimeManager(cri=runtime, volumes=volumes, events=events,
                                 config=self.config, node_name=self.name, node_ip=self.ip,
                                 node_allocatable=allocatable, node_memory=node.info.memory, get_object=get_object,
                                 metrics=self.metrics, services=services)
        pleg = Pleg(runtime, lambda uid: workers.wake(uid) if workers else None, metrics=self.metrics)
        images = ImageGC(runtime, self._image_fs, high_percent=self.config.image_gc_high_threshold_percent,
                         low_percent=self.config.image_gc_low_threshold_percent,
                         min_age=self.config.image_minimum_gc_age, max_age=self.config.image_maximum_gc_age,
                         node_event=events.record_node, collected=self.metrics.image_garbage_collected)
        evictions = self._eviction_manager(lambda: workers, events, images)
        node.pressure = evictions.pressure

        def others(pod: dict) -> list[dict]:
            """The node's other active pods, each as allocated (an in-place resize may be pending)."""
            return [w.facts.resize.pod(w.pod) for w in list(workers.workers.values())
                    if w.admitted and w.uid != pod["metadata"]["uid"] and w.terminal_status is None
                    and not w.removed]

        apparmor = admission.apparmor_enabled()
        sysctls = admission.sysctl_allowlist(self.config.allowed_unsafe_sysctls)

        def admit(pod: dict) -> tuple[str, str] | None:
            """Upstream's admission order: node pressure (the eviction manager), the pod's OS, its sysctls,
            resources and host ports, then AppArmor."""
            if message := evictions.admit(pod):
                return "Evicted", message
            return (admission.os_refusal(pod) or admission.sysctl_refusal(pod, sysctls)
                    or admission.fit(pod, others(pod), allocatable) or admission.apparmor_refusal(pod, apparmor))

        workers = PodWorkers(runtime=manager, pleg=pleg, status=status, events=events, node_ip=self.ip,
                             probe_manager=self._probe_manager(runtime, events), metrics=self.metrics, admit=admit,
                             resize_feasible=lambda pod: resize.feasibility(pod, others(pod), allocatable),
                             resize_checkpoint=resize.Checkpoint(self.config.root_dir / resize.CHECKPOINT))
        self.workers, self.pleg = workers, pleg
        self.stats = SummaryProvider(cri=runtime, pods=self._stats_pods, node_name=self.name,
                                     root_dir=self.config.root_dir, cgroup_root=self.config.cgroup_root,
                                     memory_capacity=node.info.memory,
                                     volume_stats_period=self.config.volume_stats_agg_period,
                                     claims=volumes.local_claims)
        self.metrics.watch(runtime_pods=lambda: list(pleg.pods.items()), last_relist=lambda: pleg.last_relist,
                           workers=lambda: list(workers.workers.values()), volume_stats=lambda: self.stats.pvc_stats)
        source = ListWatch(lambda: api.http, "/api/v1/pods", kind="Pod",
                           params={"fieldSelector": f"spec.nodeName={self.name}"},
                           replace=workers.replace, update=workers.update, remove=workers.remove)
        static = StaticPods(self.config.static_pod_path, self.name, node.uid or "", api,
                            self.config.file_check_frequency, update=workers.update_static,
                            remove=workers.remove_static)
        workers.static = static
        static.scan()  # before the orphan sweep, so that running static pods are known
        tasks = []
        if self.config.enable_server:
            server = KubeletServer(ServerHost(self, workers, pleg, runtime), api, self.name,
                                   [ip for ip in [self.ip, *self.config.node_ips] if ip])
            tasks.append(asyncio.create_task(server.run(), name="kubelet-server"))

        async def orphans() -> None:
            await source.synced.wait()
            while pleg.last_relist == 0:
                await asyncio.sleep(0.2)
            await workers.cleanup_orphans()

        rotation = LogRotation(runtime, lambda: [c for rt in list(pleg.pods.values()) for c in rt.running],
                               max_size=self.config.container_log_max_size,
                               max_files=self.config.container_log_max_files,
                               workers=self.config.container_log_max_workers,
                               interval=self.config.container_log_monitor_interval)
        volumes.share_root()
        return tasks + [asyncio.create_task(events.run(), name="events"),
                asyncio.create_task(evictions.run(), name="eviction-manager"),
                asyncio.create_task(images.run(), name="image-gc"),
                asyncio.create_task(rotation.run(), name="container-log-rotation"),
                asyncio.create_task(pleg.run(), name="pleg"),
                asyncio.create_task(source.run(), name="pod-source"),
                asyncio.create_task(service_source.run(), name="service-source"),
                asyncio.create_task(static.run(), name="static-pods"),
                asyncio.create_task(orphans(), name="orphan-cleanup")]

    async def _image_fs(self) -> dict | None:
        return ((await self.stats.node()).get("runtime") or {}).get("imageFs")

    def _eviction_manager(self, workers: Callable[[], PodWorkers], events: Recorder,
                          images: ImageGC) -> EvictionManager:
        config = self.config

        def active() -> list[dict]:
            return [w.pod for w in list(workers().workers.values())
                    if w.terminal_status is None and w.eviction is None and not w.removed and not w.static]

        def cleaned(uid: str) -> bool:
            """The evicted pod's worker is gone, or its containers stopped and were removed, its volumes released."""
            worker = workers().workers.get(uid)
            return worker is None or worker.cleaned_up

        return EvictionManager(
            node_stats=lambda: self.stats.node(), summary=lambda: self.stats.summary(), pods=active,
            evict=lambda pod, message, grace: workers().workers[pod["metadata"]["uid"]].evict(message, grace),
            thresholds=signals.thresholds(config.eviction_hard, config.eviction_soft,
                                          config.eviction_soft_grace_period, config.eviction_minimum_reclaim),
            transition_period=config.eviction_pressure_transition_period,
            max_pod_grace_period=config.eviction_max_pod_grace_period,
            node_event=events.record_node, evictions=self.metrics.evictions, cleaned=cleaned,
            reclaim_disk=lambda: reclaim_disk(workers(), images))

    def _probe_manager(self, runtime: CRIClient, events: Recorder):
        return lambda worker: PodProbes(worker, runtime, events, self.metrics)

    async def _start(self, runtime: CRIClient, tasks: list[asyncio.Task]) -> Api:
        systemd.notify("STATUS=Obtaining credentials (TLS bootstrap)")
        await self._credentials()
        systemd.notify(f"STATUS=Registering node {self.name}")
        api = Api(self.config.kubeconfig, observe=self.metrics.rest_request)
        self.node = NodeManager(self.config, api, runtime, self.name, self.ip)
        # The pods start before the Node is registered, as upstream's: on a kubeadm control plane the apiserver
        # to register with is one of this kubelet's static pods. Their mirror pods wait for the Node's uid.
        tasks += self._start_pods(api, runtime)
        if self.config.register_node:
            await self.node.register()
            self.workers.static.node_registered(self.node.uid or "", self.workers.wake)
        self.node.last_sync = time.monotonic()
        tasks.append(asyncio.create_task(self.node.run_status_loop(), name="node-status"))
        self.node_loop_started = True
        if self.node.uid:
            lease = NodeLease(api, self.name, self.node.uid, self.config.node_lease_duration_seconds)
            tasks.append(asyncio.create_task(lease.run(), name="node-lease"))
        if self.config.rotate_certificates:
            tasks.append(asyncio.create_task(self._rotate_certificates(api), name="certificate-rotation"))
        tasks.append(asyncio.create_task(systemd.watchdog(lambda: self.healthy()[0]), name="watchdog"))
        systemd.notify("READY=1")
        log.info("Node registered; kubelet running", node=self.name)
        return api
