"""The eviction manager (pkg/kubelet/eviction): pods over their local storage limits, and node pressure."""

from .manager import EvictionManager

__all__ = ["EvictionManager"]
