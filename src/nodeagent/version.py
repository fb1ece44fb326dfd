"""The Kubernetes release pynode's agents speak for (the one localcluster/upstream pins)."""

KUBERNETES_VERSION = "v1.36.3"
