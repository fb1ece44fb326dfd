"""Register the Node and keep its status true: the kubelet's node status manager."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable

from cri import CRIClient, CRIError

from nodeagent import logs, retry, systemd
from nodeagent.apiclient import STRATEGIC_MERGE, is_conflict

from . import nodestatus
from .. import timestamps
from ..apiclient import Api
from ..config.kubeletconfig import KubeletConfig, parse_quantity

log = logs.get(__name__)

NODES = "/api/v1/nodes"


class NodeManager:
    def __init__(self, config: KubeletConfig, api: Api, runtime: CRIClient, name: str, ip: str):
        self.config = config
        self.api = api
        self.runtime = runtime
        self.name = name
        self.ip = ip
        self.info = nodestatus.read_machine_info(config.root_dir)
        self.uid: str | None = None
        self.runtime_version = ""
        self.last_sync = time.monotonic()  # for /healthz: the loop is alive
        self.ready = False
        self._sent: dict | None = None  # the status last accepted by the apiserver
        self._sent_key: str | None = None
        self._sent_at = 0.0
        self._status_line = ""  # the last STATUS= sent to systemd
        # The pressure conditions: the eviction manager's, once the pod machinery is up (kubelet.py wires it).
        self.pressure: Callable[[], nodestatus.Pressure] = nodestatus.Pressure

    # ------------------------------------------------------------------ registration

    def desired_node(self) -> dict:
        spec: dict = {}
        if self.config.register_with_taints:
            spec["taints"] = [{"key": t.key, "value": t.value, "effect": t.effect}
                              for t in self.config.register_with_taints]
        if self.config.pod_cidr:
            spec["podCIDR"] = self.config.pod_cidr
            spec["podCIDRs"] = [self.config.pod_cidr]
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": nodestatus.labels(self.name, self.info.architecture, self.config.node_labels),
                "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": spec,
        }

    async def register(self) -> None:
        """Create the Node, or reconcile the one a previous run created; retries until it succeeds."""
        self.uid = await retry.until_done(self._register_once, log, "Unable to register node with API server",
                                          initial=0.5, maximum=7, node=self.name)

    async def _register_once(self) -> str:
        desired = self.desired_node()
        try:
            created = await self.api.json("POST", NODES, desired)
            log.info("Successfully registered node", node=self.name)
            return created["metadata"]["uid"]
        except Exception as err:
            if not is_conflict(err):
                raise
        existing = await self.api.json("GET", f"{NODES}/{self.name}")
        labels = existing["metadata"].get("labels") or {}
        patch: dict = {"metadata": {"labels": {k: v for k, v in desired["metadata"]["labels"].items()
                                               if labels.get(k) != v}}}
        if self.config.pod_cidr and not (existing.get("spec") or {}).get("podCIDR"):
            patch["spec"] = {"podCIDR": self.config.pod_cidr, "podCIDRs": [self.config.pod_cidr]}
        if patch["metadata"]["labels"] or "spec" in patch:
            await self.api.json("PATCH", f"{NODES}/{self.name}", patch, STRATEGIC_MERGE)
        log.info("Node was previously registered", node=self.name, uid=existing["metadata"]["uid"])
        return existing["metadata"]["uid"]

    # ------------------------------------------------------------------ status

    async def _runtime_facts(self) -> tuple[list[str], list[dict]]:
        timeout = min(self.config.runtime_request_timeout, 5)
        try:
            if not self.runtime_version:
                version = await self.runtime.version(timeout=timeout)
                # As upstream: only the leading numeric part of the version ("1.6.20~ds1" -> "1.6.20").
                numeric = re.match(r"\d+(\.\d+)*", version.runtime_version)
                self.runtime_version = f"{version.runtime_name}://" + (
                    numeric.group(0) if numeric else version.runtime_version)
            status = await self.runtime.status(timeout=timeout)
            images = nodestatus.images(await self.runtime.list_images(timeout=timeout))
        except CRIError as err:
            log.warning("Container runtime not responding", endpoint=self.config.container_runtime_endpoint,
                        err=err)
            return nodestatus.runtime_problems(None), (self._sent or {}).get("images", [])
        return nodestatus.runtime_problems(status), images

    async def compute_status(self) -> dict:
        problems, images = await self._runtime_facts()
        pressure = self.pressure()
        previous = (self._sent or {}).get("conditions", [])
        return {
            "conditions": nodestatus.conditions(previous, timestamps.now(), ready_problems=problems, pressure=pressure),
            "addresses": [{"type": "InternalIP", "address": self.ip}, {"type": "Hostname", "address": self.name}],
            "capacity": nodestatus.capacity(self.info, self.config.max_pods),
            "allocatable": nodestatus.allocatable(
                self.info, self.config.max_pods, kube_reserved=self.config.kube_reserved,
                system_reserved=self.config.system_reserved, eviction_hard=self.config.eviction_hard,
                parse_quantity=parse_quantity),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.config.port}},
            "nodeInfo": nodestatus.node_info(self.info, self.runtime_version),
            "images": images,
        }

    @staticmethod
    def _key(status: dict) -> str:
        """The status without heartbeat times: what must differ for a change to be worth a patch."""
        trimmed = dict(status, conditions=[{k: v for k, v in c.items() if k != "lastHeartbeatTime"}
                                           for c in status["conditions"]])
        return json.dumps(trimmed, sort_keys=True)

    async def sync_status(self) -> bool:
        """Patch the status if it changed or the report period passed; True if a patch was sent."""
        status = await self.compute_status()
        self.last_sync = time.monotonic()
        key = self._key(status)
        due = time.monotonic() - self._sent_at >= self.config.node_status_report_frequency
        if key == self._sent_key and not due:
            return False
        await self.api.json("PATCH", f"{NODES}/{self.name}/status", {"status": status}, STRATEGIC_MERGE)
        changed = key != self._sent_key
        self._sent, self._sent_key, self._sent_at = status, key, time.monotonic()
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        if ready["status"] == "True" and not self.ready:
            log.info("Node is ready", node=self.name)
        elif ready["status"] != "True" and (self.ready or changed):
            log.warning("Node is not ready", node=self.name, reason=ready["reason"], message=ready["message"])
        self.ready = ready["status"] == "True"
        self._report_status_line(ready)
        return True

    def _report_status_line(self, ready: dict) -> None:
        """What `systemctl status kubelet` shows on its Status: line, sent to systemd when it changes."""
        if ready["status"] == "True":
            line = f"Node {self.name} is Ready"
        else:
            line = f"Node {self.name} is not Ready: {ready.get('message') or ready.get('reason')}"
            if "container runtime is down" in line:
                line += (f" (nothing answers on {self.config.container_runtime_endpoint}; "
                         f"retrying every {self.config.node_status_update_frequency:g}s)")
        if line != self._status_line:
            self._status_line = line
            systemd.notify(f"STATUS={line}")

    async def run_status_loop(self) -> None:
        while True:
            try:
                await self.sync_status()
            except Exception as err:  # noqa: BLE001 - apiserver outages: log and try at the next tick
                self.last_sync = time.monotonic()
                self._sent_key = None  # send in full once it is back
                log.error("Error updating node status, will retry", node=self.name, err=err)
            await asyncio.sleep(self.config.node_status_update_frequency)
