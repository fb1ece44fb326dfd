"""pykubelet: the Kubernetes node agent, in Python."""
