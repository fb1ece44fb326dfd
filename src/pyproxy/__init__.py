"""pyproxy: the Kubernetes service proxy, in Python."""
