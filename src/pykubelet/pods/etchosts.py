"""The /etc/hosts file the kubelet writes for each pod and bind-mounts into its containers.

As upstream: `<pod dir>/etc-hosts`, rewritten before each container starts. A pod
on the pod network gets a managed file (localhost lines, its own IPs with its
hostname, `hostname.subdomain.<ns>.svc.<domain>` when it has a subdomain); a
host-network pod gets the node's /etc/hosts under a header of its own. The
pod's `hostAliases` are appended to either. A container that mounts a volume at
/etc/hosts itself, and a pod-network pod that has no IP yet, get no file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

ETC_HOSTS = "/etc/hosts"
MANAGED_HEADER = "# Kubernetes-managed hosts file.\n"
HOST_NETWORK_HEADER = "# Kubernetes-managed hosts file (host network).\n"


def _aliases(pod: Mapping) -> str:
    aliases = (pod.get("spec") or {}).get("hostAliases") or []
    if not aliases:
        return ""
    lines = [f"{alias.get('ip', '')}\t" + "\t".join(alias.get("hostnames") or []) for alias in aliases]
    return "\n# Entries added by HostAliases.\n" + "".join(line + "\n" for line in lines)


def managed_content(pod: Mapping, pod_ips: list[str], hostname: str, domain: str) -> str:
    text = (MANAGED_HEADER + "127.0.0.1\tlocalhost\n" + "::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\n" "fe00::0\tip6-mcastprefix\n" "fe00::1\tip6-allnodes\n"
            "fe00::2\tip6-allrouters\n")
    for ip in pod_ips:
        text += f"{ip}\t{hostname}.{domain}\t{hostname}\n" if domain else f"{ip}\t{hostname}\n"
    return text + _aliases(pod)


def host_network_content(pod: Mapping, node_hosts: str) -> str:
    return HOST_NETWORK_HEADER + node_hosts + _aliases(pod)


def wanted(pod: Mapping, container: Mapping, pod_ips: list[str]) -> bool:
    """Whether the container gets the kubelet's /etc/hosts (see the module docstring)."""
    if not pod_ips and not (pod.get("spec") or {}).get("hostNetwork"):
        return False
    return all(m.get("mountPath") != ETC_HOSTS for m in container.get("volumeMounts") or [])


def write(pod_dir: Path, pod: Mapping, pod_ips: list[str], hostname: str, domain: str,
          node_hosts_file: Path = Path(ETC_HOSTS)) -> Path:
    """Write `<pod_dir>/etc-hosts` (mode 0644) and return its path."""
    if (pod.get("spec") or {}).get("hostNetwork"):
        content = host_network_content(pod, node_hosts_file.read_text())
    else:
        content = managed_content(pod, pod_ips, hostname, domain)
    path = pod_dir / "etc-hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".etc-hosts.tmp")
    tmp.write_text(content)
    tmp.chmod(0o644)
    tmp.rename(path)
    return path
