"""What the runtime holds for each pod: its sandboxes and containers, read back from CRI labels."""

from __future__ import annotations

from dataclasses import dataclass, field

from cri import api

POD_UID = "io.kubernetes.pod.uid"
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"
CONTAINER_HASH = "io.kubernetes.container.hash"
RESTART_COUNT = "io.kubernetes.container.restartCount"


@dataclass
class Container:
    id: str
    name: str
    attempt: int
    state: int  # api.CONTAINER_CREATED / RUNNING / EXITED / UNKNOWN
    created_at: int  # ns
    sandbox_id: str
    image: str
    labels: dict
    annotations: dict
    # Filled from ContainerStatus once the container has started or exited:
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    image_ref: str = ""

    @property
    def restart_count(self) -> int:
        try:
            return int(self.annotations.get(RESTART_COUNT, self.attempt))
        except ValueError:
            return self.attempt

    @property
    def spec_hash(self) -> str:
        return self.annotations.get(CONTAINER_HASH, "")


@dataclass
class Sandbox:
    id: str
    attempt: int
    state: int  # api.SANDBOX_READY / NOTREADY
    created_at: int
    ip: str = ""
    ips: list[str] = field(default_factory=list)
    ours: bool = False  # made by a kubelet (carries the pod-uid label), not by some other CRI client


@dataclass
class PodRuntime:
    """Everything the runtime has for one pod uid, newest first."""

    sandboxes: list[Sandbox] = field(default_factory=list)
    containers: list[Container] = field(default_factory=list)

    @property
    def sandbox(self) -> Sandbox | None:
        return self.sandboxes[0] if self.sandboxes else None

    def latest(self, name: str) -> Container | None:
        """The newest container of that name (in any sandbox)."""
        return next((c for c in self.containers if c.name == name), None)

    def previous(self, name: str) -> Container | None:
        """The container of that name before the newest one, for lastState."""
        found = [c for c in self.containers if c.name == name]
        return found[1] if len(found) > 1 else None

    @property
    def running(self) -> list[Container]:
        return [c for c in self.containers if c.state == api.CONTAINER_RUNNING]

    @property
    def empty(self) -> bool:
        return not self.sandboxes and not self.containers
