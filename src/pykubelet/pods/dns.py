"""A pod's resolver configuration (CRI DNSConfig), as upstream pkg/kubelet/network/dns.

dnsPolicy ClusterFirst (the default) uses the cluster DNS servers and the cluster
search domains before the host's; ClusterFirstWithHostNet does so even on the host
network; Default takes the host's resolv.conf; None starts empty. A pod's
``dnsConfig`` is merged in last, then the libc limits are applied (3 nameservers,
32 search domains, 2048 characters of search line, no domain over 253 characters).

Warnings that upstream sends as Events go to the optional ``warnings`` list as
``(reason, message)`` pairs: ``MissingClusterDNS`` when ClusterFirst has no cluster
DNS server and falls back to Default, ``DNSConfigForming`` when limits cut entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from cri import api

from .envvars import ConfigProblem, describe_pod

DEFAULT_OPTIONS = ("ndots:5",)
MAX_NAMESERVERS = 3
MAX_SEARCH_PATHS = 32
MAX_SEARCH_CHARS = 2048
MAX_DOMAIN_LENGTH = 253


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _option_name(option: str) -> str:
    return option.split(":", 1)[0]


def parse_resolv_conf(text: str) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, searches, options) of a resolv.conf: nameservers accumulate, the last
    search line wins (trailing dots dropped, "." ignored), a later option overrides one
    of the same name."""
    servers: list[str] = []
    searches: list[str] = []
    options: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.strip().split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] == "nameserver" and len(fields) >= 2:
            servers.append(fields[1])
        elif fields[0] == "search":
            searches = [s.removesuffix(".") for s in fields[1:] if s != "."]
        elif fields[0] == "options":
            for option in fields[1:]:
                options.pop(_option_name(option), None)
                options[_option_name(option)] = option
    return servers, searches, list(options.values())


def _host_config(host_resolv_conf: Path | str | None) -> api.DNSConfig:
    """The host's resolver settings; empty when the kubelet has no resolv.conf."""
    if not host_resolv_conf:
        return api.DNSConfig()
    try:
        text = Path(host_resolv_conf).read_text(errors="replace")
    except OSError as err:
        message = f"could not read resolv.conf {host_resolv_conf}: {err.strerror}"
        raise ConfigProblem("CreatePodSandboxError", message) from err
    servers, searches, options = parse_resolv_conf(text)
    return api.DNSConfig(servers=servers, searches=searches, options=options)


def _merge_options(existing: Iterable[str], extra: Iterable[Mapping]) -> list[str]:
    """Pod dnsConfig options override host/cluster ones of the same name."""
    merged: dict[str, str] = {}
    for option in existing:
        name, _, value = option.partition(":")
        merged[name] = value
    for option in extra:
        merged[option.get("name", "")] = option.get("value") or ""
    return [f"{name}:{value}" if value else name for name, value in merged.items()]


def _fit_searches(searches: list[str]) -> tuple[list[str], bool]:
    cut = len(searches) > MAX_SEARCH_PATHS
    searches = searches[:MAX_SEARCH_PATHS]
    kept = [s for s in searches if len(s) <= MAX_DOMAIN_LENGTH]
    cut = cut or len(kept) != len(searches)
    while kept and len(" ".join(kept)) > MAX_SEARCH_CHARS:
        kept.pop()
        cut = True
    return kept, cut


def _policy(pod: Mapping) -> str:
    spec = pod.get("spec") or {}
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirst" and spec.get("hostNetwork"):
        return "Default"  # a host-network pod falls back to the node's resolver
    if policy == "ClusterFirstWithHostNet":
        return "ClusterFirst"
    if policy not in ("ClusterFirst", "Default", "None"):
        return "ClusterFirst"  # upstream logs the invalid policy and uses ClusterFirst
    return policy


def dns_config(
    pod: Mapping,
    *,
    cluster_dns: list[str],
    cluster_domain: str,
    host_resolv_conf: Path | str | None,
    node_ips: Iterable[str] = (),
    warnings: list[tuple[str, str]] | None = None,
) -> api.DNSConfig:
    """The DNSConfig for the pod's sandbox.

    ``host_resolv_conf`` None or "" means the kubelet has no resolv.conf: Default then
    resolves through localhost (``::1`` for IPv6 ``node_ips``). An unreadable resolv.conf
    raises ConfigProblem("CreatePodSandboxError").
    """
    warnings = warnings if warnings is not None else []
    policy = _policy(pod)
    config = api.DNSConfig() if policy == "None" else _host_config(host_resolv_conf)
    if policy == "ClusterFirst":
        if cluster_dns:
            searches = list(config.searches)
            if cluster_domain:
                namespace = pod["metadata"].get("namespace") or "default"
                cluster = [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
                searches = _unique([*cluster, *searches])
            config = api.DNSConfig(servers=list(cluster_dns), searches=searches, options=list(DEFAULT_OPTIONS))
        else:
            policy = "Default"
            warnings.append(("MissingClusterDNS", f'pod: "{describe_pod(pod)}". kubelet does not have ClusterDNS IP '
                             'configured and cannot create Pod using "ClusterFirst" policy. '
                             'Falling back to "Default" policy.'))
    if policy == "Default" and not host_resolv_conf:
        # No resolv.conf: resolve through the node itself, as upstream's --resolv-conf="".
        servers = ["::1" if ":" in ip else "127.0.0.1" for ip in node_ips] or ["127.0.0.1"]
        config = api.DNSConfig(servers=servers, searches=["."])

    extra = (pod.get("spec") or {}).get("dnsConfig")
    if extra:
        config = api.DNSConfig(
            servers=_unique([*config.servers, *(extra.get("nameservers") or [])]),
            searches=_unique([*config.searches, *(extra.get("searches") or [])]),
            options=_merge_options(config.options, extra.get("options") or []),
        )

    servers = list(config.servers)
    if len(servers) > MAX_NAMESERVERS:
        servers = servers[:MAX_NAMESERVERS]
        warnings.append(("DNSConfigForming", "Nameserver limits were exceeded, some nameservers have been omitted, "
                                             f"the applied nameserver line is: {' '.join(servers)}"))
    searches, cut = _fit_searches(list(config.searches))
    if cut:
        warnings.append(("DNSConfigForming", "Search Line limits were exceeded, some search paths have been omitted, "
                                             f"the applied search line is: {' '.join(searches)}"))
    return api.DNSConfig(servers=servers, searches=searches, options=list(config.options))
