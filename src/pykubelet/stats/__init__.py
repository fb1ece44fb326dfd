"""Node, pod and container usage for /stats/summary, /metrics/resource and /metrics/cadvisor."""

from .resource_metrics import cadvisor_metrics, resource_metrics
from .summary import PodRef, SummaryProvider, as_api

__all__ = ["PodRef", "SummaryProvider", "as_api", "cadvisor_metrics", "resource_metrics"]
