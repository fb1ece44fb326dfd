"""Running pods: workers, PLEG, runtime steps through CRI, status, events, static pods, and what a pod's containers
are given (QoS, DNS, env, /etc/hosts, service links, log rotation)."""
