"""Service link variables (`<SVC>_SERVICE_HOST`, `<SVC>_PORT_80_TCP`, …) from a watched cache of Services.

As upstream's kubelet: one list+watch of every Service feeds a cache that keeps only what the variables
need. A pod sees the Services of its own namespace when `enableServiceLinks` is not false, and always the
`kubernetes` Service of `default` (unless its own namespace has one of that name and links are on).
Services without a cluster IP (headless, or ExternalName) give no variables. Until the first list has
arrived the kubelet cannot build a container's environment, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

MASTER_NAMESPACE = "default"
MASTER_SERVICES = ("kubernetes",)


@dataclass(frozen=True)
class Port:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str
    ports: tuple[Port, ...]


def parse(obj: dict) -> Service:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ports = tuple(Port(p.get("name") or "", int(p.get("port") or 0), p.get("protocol") or "TCP")
                  for p in spec.get("ports") or [])
    return Service(meta.get("namespace", ""), meta.get("name", ""), spec.get("clusterIP") or "", ports)


def _variable(name: str) -> str:
    return name.replace("-", "_").upper()


def _host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def has_ip(service: Service) -> bool:
    """Headless and ExternalName Services (no cluster IP) give no variables."""
    return service.cluster_ip not in ("", "None")


def variables(service: Service) -> dict[str, str]:
    """The variables of one Service, as upstream's envvars.FromServices names them."""
    if not has_ip(service) or not service.ports:
        return {}
    prefix = _variable(service.name)
    env = {f"{prefix}_SERVICE_HOST": service.cluster_ip, f"{prefix}_SERVICE_PORT": str(service.ports[0].port)}
    for port in service.ports:
        if port.name:
            env[f"{prefix}_SERVICE_PORT_{_variable(port.name)}"] = str(port.port)
    for i, port in enumerate(service.ports):
        url = f"{port.protocol.lower()}://{_host_port(service.cluster_ip, port.port)}"
        if i == 0:
            env[f"{prefix}_PORT"] = url
        link = f"{prefix}_PORT_{port.port}_{port.protocol.upper()}"
        env.update({link: url, f"{link}_PROTO": port.protocol.lower(), f"{link}_PORT": str(port.port),
                    f"{link}_ADDR": service.cluster_ip})
    return env


class ServiceCache:
    """Subscriber of a ListWatch of /api/v1/services, indexed by namespace: a container start reads one
    namespace's Services, not the cluster's."""

    def __init__(self) -> None:
        self.namespaces: dict[str, dict[str, Service]] = {}
        self.synced = False

    def replace(self, services: list[Service]) -> None:
        self.namespaces = {}
        for service in services:
            self.update(service)
        self.synced = True

    def update(self, service: Service) -> None:
        self.namespaces.setdefault(service.namespace, {})[service.name] = service

    def remove(self, service: Service) -> None:
        names = self.namespaces.get(service.namespace, {})
        names.pop(service.name, None)
        if not names:
            self.namespaces.pop(service.namespace, None)

    def env(self, namespace: str, enable_links: bool) -> dict[str, str]:
        """The variables a pod in `namespace` gets; an empty dict before the first list."""
        master = self.namespaces.get(MASTER_NAMESPACE, {})
        chosen = {name: master[name] for name in MASTER_SERVICES if name in master and has_ip(master[name])}
        if enable_links:
            chosen.update({name: s for name, s in self.namespaces.get(namespace, {}).items() if has_ip(s)})
        env: dict[str, str] = {}
        for service in chosen.values():
            env.update(variables(service))
        return env
