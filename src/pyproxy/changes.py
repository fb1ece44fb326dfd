"""What the proxy should program, kept current from watch events, and what changed since the last sync.

Watch handlers (`update_service`, `remove_slice`, ...) take objects already parsed
by `parse_service` / `parse_endpoint_slice` (the watch does that as objects
arrive) and note the service as changed when what it means for the proxy changed
(a status update or an unrelated annotation changes nothing). `take()` then folds the
changes into `services` and `endpoints` — the state backends read — and hands
over the set of changed services, or None when a full sync is due.
"""

from __future__ import annotations

from collections.abc import Callable

from pyproxy import metrics
from pyproxy.backend import PortKey, ServiceName
from pyproxy.model import Endpoint, ServicePort, merge_endpoints, parse_slice, services_from_api

TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"

SliceKey = tuple[str, str]  # (namespace, slice name)


def _name_of(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def _trigger(obj: dict) -> tuple[float, str] | None:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(TRIGGER_TIME_ANNOTATION)
    when = metrics.parse_trigger_time(text) if text else None
    return None if when is None else (when, text)


ParsedService = tuple[ServiceName, tuple[ServicePort, ...]]
ParsedSlice = tuple[SliceKey, ServiceName | None, dict[str, list[Endpoint]], tuple[float, str] | None]


def parse_service(obj: dict) -> ParsedService:
    return _name_of(obj), tuple(services_from_api(obj))


def parse_endpoint_slice(obj: dict) -> ParsedSlice:
    service, ports = parse_slice(obj)
    return _name_of(obj), service, ports, _trigger(obj)


class ChangeTracker:
    def __init__(self, on_change: Callable[[], None] = lambda: None):
        self.on_change = on_change
        self.services: dict[PortKey, ServicePort] = {}
        self.endpoints: dict[PortKey, list[Endpoint]] = {}
        self._ports: dict[ServiceName, tuple[ServicePort, ...]] = {}
        self._slices: dict[SliceKey, tuple[ServiceName, dict[str, list[Endpoint]]]] = {}
        self._slices_of: dict[ServiceName, set[SliceKey]] = {}
        self._applied: dict[ServiceName, tuple[PortKey, ...]] = {}  # what `services` holds, per service
        self._dirty: set[ServiceName] = set()
        self._endpoint_changes: set[ServiceName] = set()  # the dirty ones whose slices changed
        self._triggers: dict[ServiceName, tuple[float, str]] = {}  # earliest pending trigger time, per service
        self._full = True

    # -- Services

    def replace_services(self, parsed: list[ParsedService]) -> None:
        fresh = dict(parsed)
        for name in set(self._ports) - set(fresh):
            self._set_ports(name, ())
        for name, ports in fresh.items():
            self._set_ports(name, ports)

    def update_service(self, parsed: ParsedService) -> None:
        self._set_ports(*parsed)

    def remove_service(self, parsed: ParsedService) -> None:
        self._set_ports(parsed[0], ())

    def _set_ports(self, name: ServiceName, ports: tuple[ServicePort, ...]) -> None:
        if self._ports.get(name, ()) == ports:
            return
        if ports:
            self._ports[name] = ports
        else:
            self._ports.pop(name, None)
        metrics.SERVICE_CHANGES_TOTAL.inc()
        self._mark(name)

    # -- EndpointSlices

    def replace_slices(self, parsed: list[ParsedSlice]) -> None:
        seen = set()
        for item in parsed:
            seen.add(item[0])
            self.update_slice(item)
        for key in set(self._slices) - seen:
            self._drop_slice(key)

    def update_slice(self, parsed: ParsedSlice) -> None:
        key, service, ports, trigger = parsed
        old = self._slices.get(key)
        if service is None:
            self._drop_slice(key)
            return
        if old is not None and old == (service, ports):
            return
        if old is not None and old[0] != service:
            self._drop_slice(key)
        self._slices[key] = (service, ports)
        self._slices_of.setdefault(service, set()).add(key)
        if trigger is not None:
            self._triggers[service] = min(trigger, self._triggers.get(service, trigger))
        self._mark_endpoints(service)

    def remove_slice(self, parsed: ParsedSlice) -> None:
        self._drop_slice(parsed[0])

    def _drop_slice(self, key: SliceKey) -> None:
        old = self._slices.pop(key, None)
        if old is None:
            return
        owners = self._slices_of.get(old[0], set())
        owners.discard(key)
        if not owners:
            self._slices_of.pop(old[0], None)
        self._mark_endpoints(old[0])

    # -- syncing

    def _mark_endpoints(self, name: ServiceName) -> None:
        metrics.ENDPOINT_CHANGES_TOTAL.inc()
        self._endpoint_changes.add(name)
        metrics.ENDPOINT_CHANGES_PENDING.set(len(self._endpoint_changes))
        self._mark(name)

    def _mark(self, name: ServiceName) -> None:
        self._dirty.add(name)
        metrics.SERVICE_CHANGES_PENDING.set(len(self._dirty))
        self.on_change()

    @property
    def pending(self) -> bool:
        return bool(self._dirty) or self._full

    def request_full(self) -> None:
        self._full = True
        self.on_change()

    def take(self) -> tuple[dict[ServiceName, tuple[PortKey, ...]] | None, dict[PortKey, ServicePort], list[str]]:
        """Fold pending changes into `services`/`endpoints`.

        Returns the changed services with their port keys now (None: sync everything),
        the service ports those services had before, and the trigger-time annotations of
        their endpoint changes.
        """
        changed, self._dirty = self._dirty, set()
        self._endpoint_changes = set()
        triggers, self._triggers = self._triggers, {}
        before = {}
        for name in changed:
            for key in self._applied.pop(name, ()):
                before[key] = self.services.pop(key)
                self.endpoints.pop(key, None)
            ports = self._ports.get(name, ())
            if ports:
                self._applied[name] = tuple(p.key for p in ports)
            for port in ports:
                self.services[port.key] = port
                per_slice = [self._slices[k][1].get(port.port_name, ()) for k in self._slices_of.get(name, ())]
                if per_slice:
                    self.endpoints[port.key] = merge_endpoints(per_slice)
        metrics.SERVICE_CHANGES_PENDING.set(0)
        metrics.ENDPOINT_CHANGES_PENDING.set(0)
        full, self._full = self._full, False
        ports = None if full else {name: self._applied.get(name, ()) for name in changed}
        return ports, before, [text for _, text in triggers.values()]
