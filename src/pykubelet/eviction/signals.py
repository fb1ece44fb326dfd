"""Eviction signals and thresholds: what the node observes (from its stats) against what the config allows.

Signal names, the resources they starve and the node conditions they raise are upstream's
(pkg/kubelet/eviction/api and helpers.go). A threshold is met when the observed available amount is below its
quantity; a percentage is of the signal's capacity.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.durations import parse_duration

from ..config.kubeletconfig import parse_quantity

MEMORY = "memory.available"
ALLOCATABLE_MEMORY = "allocatableMemory.available"
NODEFS = "nodefs.available"
NODEFS_INODES = "nodefs.inodesFree"
IMAGEFS = "imagefs.available"
IMAGEFS_INODES = "imagefs.inodesFree"
CONTAINERFS = "containerfs.available"
CONTAINERFS_INODES = "containerfs.inodesFree"
PIDS = "pid.available"

# The resource each signal starves, as eviction messages name it.
RESOURCE = {
    MEMORY: "memory", ALLOCATABLE_MEMORY: "memory",
    NODEFS: "ephemeral-storage", IMAGEFS: "ephemeral-storage", CONTAINERFS: "ephemeral-storage",
    NODEFS_INODES: "inodes", IMAGEFS_INODES: "inodes", CONTAINERFS_INODES: "inodes",
    PIDS: "pids",
}
CONDITION = {
    MEMORY: "MemoryPressure", ALLOCATABLE_MEMORY: "MemoryPressure",
    NODEFS: "DiskPressure", NODEFS_INODES: "DiskPressure", IMAGEFS: "DiskPressure", IMAGEFS_INODES: "DiskPressure",
    CONTAINERFS: "DiskPressure", CONTAINERFS_INODES: "DiskPressure",
    PIDS: "PIDPressure",
}
COUNTED = {NODEFS_INODES, IMAGEFS_INODES, CONTAINERFS_INODES, PIDS}  # numbers, not bytes


@dataclass(frozen=True)
class Threshold:
    signal: str
    value: str  # "10%" or a quantity ("100Mi")
    grace_period: float = 0.0  # seconds the signal must stay met (soft thresholds); 0 for hard ones
    hard: bool = True
    min_reclaim: str | None = None  # how far past the threshold to reclaim before the pressure ends

    def quantity(self, capacity: int, *, with_min_reclaim: bool = False) -> int:
        amount = _amount(self.value, capacity)
        if with_min_reclaim and self.min_reclaim:
            amount += _amount(self.min_reclaim, capacity)
        return amount

    @property
    def disabled(self) -> bool:
        """"0%" (or 0) switches a signal off, as kubeadm writes it."""
        return _amount(self.value, 1 << 62) == 0


@dataclass(frozen=True)
class Observation:
    available: int
    capacity: int


def _amount(text: str, capacity: int) -> int:
    if text.endswith("%"):
        return int(capacity * float(text[:-1]) / 100)
    return int(parse_quantity(text))


def thresholds(hard: dict[str, str], soft: dict[str, str], soft_grace_periods: dict[str, str],
               minimum_reclaim: dict[str, str]) -> list[Threshold]:
    """The configured thresholds (the config parser has checked them, and that each soft one has a grace period)."""
    found = [Threshold(signal, value, min_reclaim=minimum_reclaim.get(signal)) for signal, value in hard.items()]
    found += [Threshold(signal, value, grace_period=parse_duration(soft_grace_periods[signal]), hard=False,
                        min_reclaim=minimum_reclaim.get(signal)) for signal, value in soft.items()]
    return [t for t in found if not t.disabled]


def observe(node: dict) -> dict[str, Observation]:
    """Each signal's observation from the summary's node stats; a signal with no figure is left out."""
    found: dict[str, Observation] = {}
    memory = node.get("memory") or {}
    if memory.get("availableBytes") is not None and memory.get("workingSetBytes") is not None:
        found[MEMORY] = Observation(memory["availableBytes"], memory["availableBytes"] + memory["workingSetBytes"])
    for system in node.get("systemContainers") or []:
        pods = system.get("memory") or {}
        if system.get("name") == "pods" and pods.get("availableBytes") is not None \
                and pods.get("workingSetBytes") is not None:
            found[ALLOCATABLE_MEMORY] = Observation(pods["availableBytes"],
                                                    pods["availableBytes"] + pods["workingSetBytes"])
    runtime = node.get("runtime") or {}
    for fs, space, inodes in ((node.get("fs"), NODEFS, NODEFS_INODES),
                              (runtime.get("imageFs"), IMAGEFS, IMAGEFS_INODES),
                              (runtime.get("containerFs"), CONTAINERFS, CONTAINERFS_INODES)):
        fs = fs or {}
        if fs.get("availableBytes") is not None and fs.get("capacityBytes") is not None:
            found[space] = Observation(fs["availableBytes"], fs["capacityBytes"])
        if fs.get("inodesFree") is not None and fs.get("inodes") is not None:
            found[inodes] = Observation(fs["inodesFree"], fs["inodes"])
    rlimit = node.get("rlimit") or {}
    if rlimit.get("maxpid") is not None and rlimit.get("curproc") is not None:
        found[PIDS] = Observation(rlimit["maxpid"] - rlimit["curproc"], rlimit["maxpid"])
    return found


def met(candidates: list[Threshold], observations: dict[str, Observation], *,
        with_min_reclaim: bool = False) -> list[Threshold]:
    """The thresholds whose signal is observed below their quantity (plus the minimum reclaim if asked)."""
    return [t for t in candidates if (seen := observations.get(t.signal)) is not None
            and seen.available < t.quantity(seen.capacity, with_min_reclaim=with_min_reclaim)]


def quantity_text(amount: int, *, counted: bool = False) -> str:
    """An amount as the API prints a quantity: bytes with the largest binary suffix that divides them, counts
    (inodes, pids) with the largest decimal one."""
    if counted:
        steps = (("E", 10**18), ("P", 10**15), ("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))
    else:
        steps = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
    amount = int(amount)
    for suffix, size in steps:
        if amount and amount % size == 0:
            return f"{amount // size}{suffix}"
    return str(amount)


def text(signal: str, amount: int) -> str:
    return quantity_text(amount, counted=signal in COUNTED)
