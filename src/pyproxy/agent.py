"""pyproxy's main loop: watch Services, EndpointSlices and our Node; sync the kernel through one backend.

Every long-lived task is owned here and cancelled on SIGTERM. A sync runs the
backend in a worker thread (it blocks on iptables-restore/nft/netlink), one at
a time, paced by the bounded-frequency runner; the event loop keeps taking
watch events meanwhile.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from nodeagent import logs, memdump, systemd
from nodeagent.apiclient import Api
from nodeagent.listwatch import ListWatch

from pyproxy import metrics
from pyproxy.backend import Backend, NodeContext, SyncFailed
from pyproxy.changes import ChangeTracker, parse_endpoint_slice, parse_service
from pyproxy.config import ProxyConfig
from pyproxy.conntrack import ConntrackCleaner, cleanup_needed
from pyproxy.healthcheck import ProxyHealth, ServiceHealthServers, node_is_eligible
from pyproxy.runner import BoundedFrequencyRunner

log = logs.get(__name__)

NODE_WAIT = 30.0  # seconds to wait for our Node object (its addresses) before going on without them
ZONE_LABEL = "topology.kubernetes.io/zone"


def backend_class(mode: str) -> type[Backend]:
    if mode == "iptables":
        from pyproxy.iptables import IptablesBackend
        return IptablesBackend
    if mode == "nftables":
        from pyproxy.nftables import NftablesBackend
        return NftablesBackend
    from pyproxy.ipvs import IpvsBackend
    return IpvsBackend


def make_backend(config: ProxyConfig, node: NodeContext, mode: str | None = None) -> Backend:
    mode = mode or config.mode
    if mode == "ipvs":
        from pyproxy.ipvs import DEFAULT_SCHEDULER, IpvsBackend
        return IpvsBackend(node, scheduler=config.ipvs_scheduler or DEFAULT_SCHEDULER)
    return backend_class(mode)(node)


def cleanup_modes(config: ProxyConfig, modes) -> bool:
    """Remove what the given modes left in the kernel; True if anything was removed."""
    removed = False
    context = NodeContext(node_name=config.hostname)
    for mode in modes:
        try:
            if make_backend(config, context, mode).cleanup():
                log.info("Removed rules left by a proxy mode", mode=mode)
                removed = True
        except Exception as err:  # noqa: BLE001 - best effort, as upstream
            log.warning("Clean-up of a proxy mode failed", mode=mode, err=err)
            if mode == "nftables":
                metrics.NFTABLES_CLEANUP_FAILURES_TOTAL.labels(ip_family="IPv4").inc()
    return removed


def node_addresses(node: dict | None) -> tuple[str, ...]:
    """InternalIP addresses first, then ExternalIP ones (upstream's node IP choice)."""
    addresses = ((node or {}).get("status") or {}).get("addresses") or []
    ordered = [a.get("address") for kind in ("InternalIP", "ExternalIP") for a in addresses if a.get("type") == kind]
    return tuple(dict.fromkeys(a for a in ordered if a))


class Proxy:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.api = Api(Path(config.kubeconfig) if config.kubeconfig else None, field_manager="pyproxy")
        self.tracker = ChangeTracker(on_change=self._changed)
        self.health = ProxyHealth(health_timeout=2 * config.sync_period)
        self.service_health = ServiceHealthServers(self.health)
        self.conntrack = ConntrackCleaner()
        self.registry = metrics.new_registry(config.mode)
        self.runner = BoundedFrequencyRunner(self._sync, min_interval=config.min_sync_period,
                                             max_interval=config.sync_period)
        self.node: dict | None = None
        self.node_seen = asyncio.Event()
        self.backend: Backend | None = None
        self.synced_once = False
        self.local_policy: dict[tuple[str, str], tuple[int, int, int, int]] = {}  # see _local_policy_state
        self.sources: list[ListWatch] = []

    # -- watch callbacks

    def _changed(self) -> None:
        self.health.queued()
        metrics.SYNC_PROXY_RULES_LAST_QUEUED_TIMESTAMP.labels(ip_family="IPv4").set(time.time())
        if all(s.synced.is_set() for s in self.sources):
            self.runner.request()

    def _node_update(self, node: dict) -> None:
        old = self.node
        self.node = node
        self.node_seen.set()
        self.health.node_eligible = node_is_eligible(node)
        if self.backend is not None and old is not None and self._context(node) != self.backend.node:
            log.info("Node addresses or zone changed; rebuilding the rules", node=self.config.hostname)
            self.backend = make_backend(self.config, self._context(node))
            self.tracker.request_full()

    def _node_replace(self, nodes: list[dict]) -> None:
        if nodes:
            self._node_update(nodes[0])
        else:
            self.health.node_eligible = False

    def _node_remove(self, node: dict) -> None:
        self.health.node_eligible = False

    def _context(self, node: dict | None) -> NodeContext:
        ips = node_addresses(node)
        if self.config.bind_address not in ("", "0.0.0.0", "::"):
            ips = (self.config.bind_address,) + tuple(i for i in ips if i != self.config.bind_address)
        zone = (((node or {}).get("metadata") or {}).get("labels") or {}).get(ZONE_LABEL, "")
        return NodeContext(
            node_name=self.config.hostname, node_ips=ips, zone=zone,
            cluster_cidr=self.config.cluster_cidrs[0] if self.config.cluster_cidrs else None,
            masquerade_all=self.config.masquerade_all, nodeport_addresses=tuple(self.config.nodeport_addresses),
            localhost_nodeports=self.config.localhost_nodeports and self.config.mode == "iptables")

    # -- syncing

    async def _sync(self) -> bool:
        """One sync; True asks the runner for a retry."""
        if self.backend is None or not all(s.synced.is_set() for s in self.sources):
            return False
        changed, before, triggers = self.tracker.take()
        services, endpoints = self.tracker.services, self.tracker.endpoints
        start = time.monotonic()
        try:
            full = await asyncio.to_thread(self.backend.sync, services, endpoints, changed)
        except Exception as err:  # noqa: BLE001 - SyncFailed, or a bug: never lose the agent over it
            failures = (metrics.NFTABLES_SYNC_FAILURES_TOTAL if self.config.mode == "nftables"
                        else metrics.IPTABLES_RESTORE_FAILURES_TOTAL)
            failures.labels(ip_family="IPv4").inc()
            if changed is not None and self.config.mode == "iptables":
                metrics.IPTABLES_PARTIAL_RESTORE_FAILURES_TOTAL.labels(ip_family="IPv4").inc()
            if isinstance(err, SyncFailed):
                log.error("Failed to program the kernel; the next sync will be a full one", mode=self.config.mode,
                          err=err)
            else:
                log.error("Sync failed unexpectedly; the next sync will be a full one", mode=self.config.mode,
                          err=repr(err))
            self.tracker.request_full()
            return True
        elapsed = time.monotonic() - start
        metrics.record_sync(elapsed, full=full)
        self.health.updated()
        log.debug("Synced proxy rules", full=full, services=len(services), elapsed=f"{elapsed:.3f}s")
        for trigger in triggers:
            metrics.observe_network_programming(trigger)
        await self._service_health(changed, services, endpoints)
        if changed is None or cleanup_needed(changed, before, services):
            await self.conntrack.clean(services, endpoints)
        if not self.synced_once:
            self.synced_once = True
            systemd.notify("READY=1")
            log.info("Proxy rules in place", mode=self.config.mode, services=len(services))
        return False

    async def _service_health(self, changed, services, endpoints) -> None:
        """healthCheckNodePort servers (externalTrafficPolicy Local) with their local endpoint counts, and the
        count of Local-policy services without local endpoints; recomputed for the changed services only."""
        if changed is None:
            self.local_policy = {}
            changed = {}
            for key in services:
                changed.setdefault((key[0], key[1]), []).append(key)
        for name, keys in changed.items():
            state = self._local_policy_state(keys, services, endpoints)
            if state is None:
                self.local_policy.pop(name, None)
            else:
                self.local_policy[name] = state
        for policy, index in (("internal", 2), ("external", 3)):
            metrics.SYNC_PROXY_RULES_NO_LOCAL_ENDPOINTS_TOTAL.labels(ip_family="IPv4", traffic_policy=policy).set(
                sum(state[index] for state in self.local_policy.values()))
        await self.service_health.sync({name: (port, local) for name, (port, local, _, _) in self.local_policy.items()
                                        if port})

    def _local_policy_state(self, keys, services, endpoints) -> tuple[int, int, int, int] | None:
        """(healthCheckNodePort, local endpoints, ports without local endpoints for the internal / external
        policy) of one service; None if none of its ports has a Local policy."""
        port = local_max = no_internal = no_external = 0
        relevant = False
        for key in keys:
            svc = services[key]
            if not svc.uses_local_endpoints:
                continue
            relevant = True
            eps = endpoints.get(key, ())
            local = sum(1 for e in eps if e.ready and e.node_name == self.config.hostname)
            if not local and eps:
                no_internal += svc.internal_policy_local
                no_external += svc.external_policy_local
            if svc.health_check_node_port and svc.external_policy_local:
                port, local_max = svc.health_check_node_port, max(local_max, local)
        return (port, local_max, no_internal, no_external) if relevant else None

    # -- running

    async def _serve(self) -> list[asyncio.Server]:
        servers = []
        for what, address, start in (
                ("healthz", self.config.healthz_bind_address, self.health.serve),
                ("metrics", self.config.metrics_bind_address,
                 lambda host, port: metrics.serve(host, port, proxy_mode=self.config.mode, registry=self.registry))):
            if not address:
                continue
            host, _, port = address.rpartition(":")
            try:
                servers.append(await start(host.strip("[]"), int(port)))
            except OSError as err:
                log.error("Cannot serve; going on without it", server=what, address=address, err=err)
        return servers

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        memdump.install(loop)
        tasks: list[asyncio.Task] = []
        servers = await self._serve()
        try:
            node_source = ListWatch(lambda: self.api.http, "/api/v1/nodes", kind="Node",
                                    params={"fieldSelector": f"metadata.name={self.config.hostname}"},
                                    replace=self._node_replace, update=self._node_update, remove=self._node_remove)
            tasks.append(asyncio.create_task(node_source.run(), name="node-watch"))
            try:
                await asyncio.wait_for(self.node_seen.wait(), NODE_WAIT)
            except asyncio.TimeoutError:
                log.warning("No Node object for this host yet; NodePorts will use every local address",
                            node=self.config.hostname)
            self.backend = make_backend(self.config, self._context(self.node))
            log.info("Using proxy mode", mode=self.config.mode, nodeIPs=",".join(self.backend.node.node_ips))
            self.health.updated()  # as upstream's sync loop start: healthy until a change waits too long
            self.sources = [
                ListWatch(lambda: self.api.http, "/api/v1/services", kind="Service",
                          params={"labelSelector": "!service.kubernetes.io/service-proxy-name"},
                          replace=self.tracker.replace_services, update=self.tracker.update_service,
                          remove=self.tracker.remove_service, parse=parse_service),
                ListWatch(lambda: self.api.http, "/apis/discovery.k8s.io/v1/endpointslices", kind="EndpointSlice",
                          params={"labelSelector": "!service.kubernetes.io/service-proxy-name"},
                          replace=self.tracker.replace_slices, update=self.tracker.update_slice,
                          remove=self.tracker.remove_slice, parse=parse_endpoint_slice),
            ]
            tasks += [asyncio.create_task(s.run(), name=f"{s.kind}-watch") for s in self.sources]
            tasks.append(asyncio.create_task(self._start_runner(), name="sync-runner"))
            tasks.append(asyncio.create_task(systemd.watchdog(self.health.healthy), name="watchdog"))
            await stop.wait()
            log.info("Shutting down; the rules stay in place")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for server in servers:
                server.close()
            await self.service_health.close()
            await self.api.close()

    async def _start_runner(self) -> None:
        for source in self.sources:
            await source.synced.wait()
        self.runner.request()
        await self.runner.loop()


def check_mode(config: ProxyConfig) -> None:
    """Raise BackendUnavailable if this host cannot run the configured mode."""
    make_backend(config, NodeContext(node_name=config.hostname)).check()
