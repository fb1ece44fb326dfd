"""persistentVolumeClaim and generic ephemeral volumes, for PersistentVolumes the kubelet mounts itself.

A claim must be bound; its PersistentVolume must be a `hostPath` or `local` one with `volumeMode:
Filesystem` (both are paths on this node, bind-mounted into the container as they are). A volume that needs
a CSI or in-tree driver is refused naming it. An ephemeral volume's claim is `<pod>-<volume>` and must be
owned by the pod, as the ephemeral volume controller makes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

Get = Callable[[str], Awaitable["dict | None"]]  # API path -> object (None: not found)

_LOCAL_KINDS = ("hostPath", "local")


@dataclass(frozen=True)
class Claimed:
    claim: str  # the claim's name
    volume: str  # the PersistentVolume's name
    path: Path
    kind: str  # hostPath or local
    read_only: bool
    host_path_type: str | None = None


def claim_name(pod: dict, volume: dict) -> tuple[str, bool]:
    """(claim name, whether it is a generic ephemeral volume's)."""
    if "ephemeral" in volume:
        return f"{pod['metadata']['name']}-{volume['name']}", True
    return volume["persistentVolumeClaim"].get("claimName", ""), False


async def resolve(pod: dict, volume: dict, get: Get) -> Claimed:
    """The PersistentVolume behind the volume's claim; ValueError with upstream's text when it cannot be used."""
    meta = pod["metadata"]
    namespace = meta["namespace"]
    name, ephemeral = claim_name(pod, volume)
    claim = await get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}")
    if claim is None:
        raise ValueError(f"error processing PVC {namespace}/{name}: failed to fetch PVC from API server: "
                         f'persistentvolumeclaims "{name}" not found')
    if ephemeral:
        owners = (claim.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("uid") == meta["uid"] and o.get("controller") for o in owners):
            raise ValueError(f"error processing PVC {namespace}/{name}: PVC {namespace}/{name} was not created "
                             f"for pod {namespace}/{meta['name']} (pod is not owner)")
    if (claim.get("metadata") or {}).get("deletionTimestamp"):
        raise ValueError(f"error processing PVC {namespace}/{name}: PVC is being deleted")
    if (claim.get("status") or {}).get("phase") != "Bound" or not (claim.get("spec") or {}).get("volumeName"):
        raise ValueError(f"error processing PVC {namespace}/{name}: PVC is not bound")
    pv_name = claim["spec"]["volumeName"]
    pv = await get(f"/api/v1/persistentvolumes/{pv_name}")
    if pv is None:
        raise ValueError(f"error processing PVC {namespace}/{name}: failed to fetch PV {pv_name} from API server: "
                         f'persistentvolumes "{pv_name}" not found')
    spec = pv.get("spec") or {}
    claim_ref = spec.get("claimRef") or {}
    if claim_ref.get("uid") and claim_ref.get("uid") != claim["metadata"].get("uid"):
        raise ValueError(f"error processing PVC {namespace}/{name}: PV {pv_name} is bound to another claim")
    if spec.get("volumeMode", "Filesystem") != "Filesystem":
        raise ValueError(f"PersistentVolume {pv_name}: volumeMode {spec['volumeMode']} is not supported by "
                         "pykubelet (Filesystem only)")
    kind = next((k for k in _LOCAL_KINDS if k in spec), None)
    if kind is None:
        driver = (spec.get("csi") or {}).get("driver")
        source = f'CSI driver "{driver}"' if driver else \
            next((f"volume plugin {k!r}" for k in spec if k not in _IGNORED_PV_FIELDS), "an unknown volume source")
        raise ValueError(f"PersistentVolume {pv_name} needs {source}, which pykubelet does not provide "
                         "(hostPath and local PersistentVolumes only)")
    read_only = bool((volume.get("persistentVolumeClaim") or {}).get("readOnly"))
    return Claimed(name, pv_name, Path(spec[kind]["path"]), kind, read_only, spec[kind].get("type"))


_IGNORED_PV_FIELDS = {"accessModes", "capacity", "claimRef", "mountOptions", "nodeAffinity",
                      "persistentVolumeReclaimPolicy", "storageClassName", "volumeMode", "volumeAttributesClassName"}
