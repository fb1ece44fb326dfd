"""Pod volumes: the volume manager and its plugins (see manager.py)."""

from .manager import MountProblem, Prepared, VolumeManager, pod_dir

__all__ = ["MountProblem", "Prepared", "VolumeManager", "pod_dir"]
