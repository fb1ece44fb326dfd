"""Images on the node: their garbage collection."""

from .gc import ImageGC

__all__ = ["ImageGC"]
