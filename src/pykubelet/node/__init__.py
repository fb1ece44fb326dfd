"""The Node: registration, status, Lease, certificates and /healthz."""
