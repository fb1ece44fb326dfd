"""pykubelet's main loop: bootstrap credentials, register, then keep status, lease and certificate fresh.

Every long-lived task is owned here and cancelled on SIGTERM; running pods are
never touched by a shutdown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time

from cri import CRIClient

from . import certificates, healthz, logs, nodestatus, systemd
from .apiclient import Api
from .config import KubeletConfig
from .node import NodeManager
from .nodelease import NodeLease
from .version import KUBERNETES_VERSION

log = logs.get(__name__)

STALE_SYNC = 120.0  # /healthz fails when the status loop has not run for this long


class Kubelet:
    def __init__(self, config: KubeletConfig):
        self.config = config
        self.name = nodestatus.node_name(config.hostname_override)
        self.ip = config.node_ip or nodestatus.default_node_ip()
        self.node: NodeManager | None = None
        self.started = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        if self.node is None:
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
        """Renew the client certificate at a jittered 70-90% of its lifetime."""
        while True:
            current = certificates.load_current(self.config.cert_dir)
            if current is None:
                return  # the kubeconfig does not use a rotated certificate (e.g. a token)
            deadline = current.rotation_deadline()
            wait = (deadline - dt.datetime.now(dt.timezone.utc)).total_seconds()
            log.info("Client certificate rotation scheduled", notAfter=current.not_after.isoformat(),
                     rotateAt=deadline.isoformat())
            await asyncio.sleep(max(wait, 0))
            backoff = 1.0
            while True:
                try:
                    await certificates.rotate(api.client, self.config.cert_dir, self.name)
                    await api.reload()
                    break
                except Exception as err:  # noqa: BLE001 - keep the old certificate and try again
                    log.error("Certificate rotation failed; retrying", err=err, retryIn=f"{backoff:.0f}s")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 300)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("Starting pykubelet", version=KUBERNETES_VERSION, node=self.name, nodeIP=self.ip)
        for warning in self.config.warnings:
            log.warning(warning)

        server = await healthz.serve(self.config.healthz_bind_address, self.config.healthz_port, self.healthy)
        tasks: list[asyncio.Task] = []
        api: Api | None = None
        runtime = CRIClient(self.config.container_runtime_endpoint, timeout=self.config.runtime_request_timeout)
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

    async def _start(self, runtime: CRIClient, tasks: list[asyncio.Task]) -> Api:
        await self._credentials()
        api = Api(self.config.kubeconfig)
        self.node = NodeManager(self.config, api, runtime, self.name, self.ip)
        if self.config.register_node:
            await self.node.register()
        tasks.append(asyncio.create_task(self.node.run_status_loop(), name="node-status"))
        if self.node.uid:
            lease = NodeLease(api, self.name, self.node.uid, self.config.node_lease_duration_seconds)
            tasks.append(asyncio.create_task(lease.run(), name="node-lease"))
        if self.config.rotate_certificates:
            tasks.append(asyncio.create_task(self._rotate_certificates(api), name="certificate-rotation"))
        tasks.append(asyncio.create_task(systemd.watchdog(lambda: self.healthy()[0]), name="watchdog"))
        systemd.notify("READY=1")
        log.info("Node registered; kubelet running", node=self.name)
        return api
