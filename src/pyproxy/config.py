"""pyproxy's settings: upstream kube-proxy's flags and its KubeProxyConfiguration file.

As upstream (v1.36): with ``--config`` the file decides and the other flags are
ignored, except logging (``--v``), ``--hostname-override``, ``--cleanup``,
``--init-only`` and ``--write-config-to``; without it the flags apply over the
defaults. The file is decoded strictly: an unknown field, a wrong type or a bad
value is an error naming the field, as upstream's strict decoding does.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodeagent import flags
from nodeagent.durations import format_duration, parse_duration

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
MODES = ("iptables", "nftables", "ipvs")

# cmd/kube-proxy/app/options.go (AddFlags) plus the logging and global flags.
KNOWN_FLAGS = flags.table("""
    config write-config-to cleanup:bool kubeconfig master kube-api-content-type kube-api-burst kube-api-qps
    hostname-override bind-address bind-address-hard-fail:bool healthz-bind-address healthz-port
    metrics-bind-address metrics-port profiling:bool show-hidden-metrics-for-version init-only:bool
    proxy-mode masquerade-all:bool iptables-masquerade-bit iptables-localhost-nodeports:bool
    iptables-sync-period iptables-min-sync-period ipvs-sync-period ipvs-min-sync-period ipvs-scheduler
    ipvs-exclude-cidrs ipvs-strict-arp:bool ipvs-tcp-timeout ipvs-tcpfin-timeout ipvs-udp-timeout
    cluster-cidr nodeport-addresses detect-local-mode pod-bridge-interface pod-interface-name-prefix
    oom-score-adj conntrack-max-per-core conntrack-min conntrack-tcp-timeout-established
    conntrack-tcp-be-liberal:bool conntrack-udp-timeout conntrack-udp-timeout-stream config-sync-period
    feature-gates v vmodule logging-format log-flush-frequency log-text-split-stream:bool
    log-text-info-buffer-size log-json-split-stream:bool log-json-info-buffer-size version:bool help:bool
""")
SHORTHANDS = {"v": "v", "h": "help"}
# Flags that still count when --config is given (everything else is ignored then, as upstream).
WITH_CONFIG_FILE = frozenset({"config", "write-config-to", "cleanup", "init-only", "hostname-override", "v",
                              "vmodule", "logging-format", "log-flush-frequency", "version", "help"})
# Flags we accept for compatibility but that change nothing here.
NO_EFFECT = frozenset({"master", "profiling", "show-hidden-metrics-for-version", "kube-api-content-type",
                       "kube-api-burst", "kube-api-qps", "bind-address-hard-fail", "oom-score-adj",
                       "conntrack-max-per-core", "conntrack-min", "conntrack-tcp-timeout-established", "conntrack-tcp-be-liberal",
                       "conntrack-udp-timeout", "conntrack-udp-timeout-stream", "config-sync-period",
                       "feature-gates", "vmodule", "logging-format", "log-flush-frequency",
                       "log-text-split-stream", "log-text-info-buffer-size", "log-json-split-stream",
                       "log-json-info-buffer-size", "ipvs-tcp-timeout", "ipvs-tcpfin-timeout", "ipvs-udp-timeout",
                       "ipvs-strict-arp", "detect-local-mode", "pod-bridge-interface", "pod-interface-name-prefix"})


class ConfigError(Exception):
    pass


@dataclass
class ProxyConfig:
    """The effective settings (durations in seconds)."""
    kubeconfig: str = ""
    hostname: str = ""
    bind_address: str = "0.0.0.0"
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    mode: str = "iptables"
    sync_period: float = 30.0
    min_sync_period: float = 1.0
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_nodeports: bool = True
    cluster_cidrs: list[str] = field(default_factory=list)
    nodeport_addresses: list[str] = field(default_factory=list)
    ipvs_scheduler: str = ""
    ipvs_exclude_cidrs: list[str] = field(default_factory=list)
    verbosity: int = 0
    cleanup: bool = False
    init_only: bool = False
    write_config_to: str = ""
    ignored_flags: list[str] = field(default_factory=list)  # given with --config, so not applied (as upstream)
    inert_flags: list[str] = field(default_factory=list)  # accepted for compatibility; they change nothing
    document: dict = field(default_factory=dict)  # the KubeProxyConfiguration, defaulted (for --write-config-to)


def default_document() -> dict:
    """A KubeProxyConfiguration with upstream's v1alpha1 defaults."""
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "bindAddress": "0.0.0.0", "bindAddressHardFail": False, "clientConnection": {
            "acceptContentTypes": "", "burst": 10, "contentType": "application/vnd.kubernetes.protobuf",
            "kubeconfig": "", "qps": 5},
        "clusterCIDR": "", "configSyncPeriod": "15m0s",
        "conntrack": {"maxPerCore": 32768, "min": 131072, "tcpBeLiberal": False, "tcpCloseWaitTimeout": "1h0m0s",
                      "tcpEstablishedTimeout": "24h0m0s", "udpStreamTimeout": "0s", "udpTimeout": "0s"},
        "detectLocal": {"bridgeInterface": "", "interfaceNamePrefix": ""}, "detectLocalMode": "",
        "enableProfiling": False, "featureGates": {}, "healthzBindAddress": "0.0.0.0:10256", "hostnameOverride": "",
        "iptables": {"localhostNodePorts": True, "masqueradeAll": False, "masqueradeBit": 14,
                     "minSyncPeriod": "1s", "syncPeriod": "30s"},
        "ipvs": {"excludeCIDRs": None, "minSyncPeriod": "0s", "scheduler": "", "strictARP": False,
                 "syncPeriod": "30s", "tcpFinTimeout": "0s", "tcpTimeout": "0s", "udpTimeout": "0s"},
        "logging": {"flushFrequency": 5000000000, "format": "text", "options": {}, "verbosity": 0},
        "metricsBindAddress": "127.0.0.1:10249", "mode": "",
        "nftables": {"masqueradeAll": False, "masqueradeBit": 14, "minSyncPeriod": "1s", "syncPeriod": "30s"},
        "nodePortAddresses": None, "oomScoreAdj": -999, "portRange": "", "showHiddenMetricsForVersion": "",
        "winkernel": {"enableDSR": False, "forwardHealthCheckVip": False, "networkName": "",
                      "rootHnsEndpointName": "", "sourceVip": ""},
    }


# --- checking values ----------------------------------------------------------------------------

def _want(value: Any, kind: type | tuple, where: str) -> Any:
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    return value


def _duration(value: Any, where: str) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1e9  # a bare number is nanoseconds, as in Go's JSON
    try:
        seconds = parse_duration(_want(value, str, where))
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    if seconds < 0:
        raise ConfigError(f"{where}: must be greater than or equal to 0")
    return seconds


def _cidrs(values: Any, where: str, *, keywords: tuple[str, ...] = ()) -> list[str]:
    out = []
    for raw in values or []:
        text = str(raw).strip()
        if text in keywords:
            out.append(text)
            continue
        try:
            out.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ConfigError(f"{where}: invalid CIDR {text!r}") from None
    return out


def _host_port(value: str, default_port: int, where: str) -> str:
    """"ip:port" or just "ip" (port added); "" disables the server."""
    if value == "":
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or (value.count(":") > 1 and not value.startswith("[")):
        host, port = value, str(default_port)
    try:
        ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} must be IP:port") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{where}: port {number} out of range")
    return f"{host}:{number}"


def _mode(value: str, where: str) -> str:
    if value in ("", None):
        return "iptables"
    if value not in MODES:
        raise ConfigError(f"{where}: unknown proxy mode {value!r} (on Linux: iptables, nftables or ipvs)")
    return value


def _masquerade_bit(value: Any, where: str) -> int:
    bit = _want(value, int, where)
    if not 0 <= bit <= 31:
        raise ConfigError(f"{where}: must be within the range [0, 31]")
    return bit


# --- the config file --------------------------------------------------------------------------

def _check_fields(given: dict, known: dict, where: str) -> None:
    for key, value in given.items():
        if key not in known:
            raise ConfigError(f"strict decoding error: unknown field \"{where}{key}\"")
        if isinstance(known[key], dict) and key not in ("featureGates", "options") and value is not None:
            _check_fields(_want(value, dict, where + key), known[key], f"{where}{key}.")


def load_file(path: str) -> dict:
    """The KubeProxyConfiguration in `path`, merged over the defaults; ConfigError naming what is wrong."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"failed to read config file {path!r}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path!r} is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path!r} does not hold a {KIND} object")
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise ConfigError(f"config file {path!r}: expected kind {KIND} and apiVersion {API_VERSION}, "
                          f"got {doc.get('kind')!r} {doc.get('apiVersion')!r}")
    merged = default_document()
    _check_fields(doc, merged, "")
    for key, value in doc.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict) and key not in ("featureGates",):
            merged[key] = {**merged[key], **value}
        elif value is not None:
            merged[key] = value
    return merged


def _from_document(doc: dict, cfg: ProxyConfig) -> None:
    cfg.document = doc
    cfg.kubeconfig = _want(doc["clientConnection"].get("kubeconfig") or "", str, "clientConnection.kubeconfig")
    cfg.hostname = _want(doc.get("hostnameOverride") or "", str, "hostnameOverride").strip().lower()
    cfg.bind_address = _want(doc.get("bindAddress") or "0.0.0.0", str, "bindAddress")
    cfg.healthz_bind_address = _host_port(_want(doc["healthzBindAddress"], str, "healthzBindAddress"), 10256,
                                          "healthzBindAddress")
    cfg.metrics_bind_address = _host_port(_want(doc["metricsBindAddress"], str, "metricsBindAddress"), 10249,
                                          "metricsBindAddress")
    cfg.mode = _mode(doc.get("mode") or "", "mode")
    section = {"iptables": "iptables", "nftables": "nftables", "ipvs": "ipvs"}[cfg.mode]
    cfg.sync_period = _duration(doc[section]["syncPeriod"], f"{section}.syncPeriod")
    cfg.min_sync_period = _duration(doc[section]["minSyncPeriod"], f"{section}.minSyncPeriod")
    if cfg.sync_period <= 0:
        raise ConfigError(f"{section}.syncPeriod: must be greater than 0")
    masq = doc["nftables"] if cfg.mode == "nftables" else doc["iptables"]
    cfg.masquerade_all = _want(masq.get("masqueradeAll", False), bool, f"{section}.masqueradeAll")
    cfg.masquerade_bit = _masquerade_bit(masq.get("masqueradeBit", 14), f"{section}.masqueradeBit")
    cfg.localhost_nodeports = _want(doc["iptables"].get("localhostNodePorts", True), bool,
                                    "iptables.localhostNodePorts")
    cfg.cluster_cidrs = _cidrs([c for c in _want(doc.get("clusterCIDR") or "", str, "clusterCIDR").split(",") if c],
                               "clusterCIDR")
    cfg.nodeport_addresses = _cidrs(doc.get("nodePortAddresses"), "nodePortAddresses",
                                    keywords=("primary", "localhost", "all"))
    cfg.ipvs_scheduler = _want(doc["ipvs"].get("scheduler") or "", str, "ipvs.scheduler")
    cfg.ipvs_exclude_cidrs = _cidrs(doc["ipvs"].get("excludeCIDRs"), "ipvs.excludeCIDRs")
    verbosity = (doc.get("logging") or {}).get("verbosity", 0)
    cfg.verbosity = _want(verbosity, int, "logging.verbosity")


# --- flags --------------------------------------------------------------------------------------

def _flag_bool(flag: flags.Flag) -> bool:
    if flag.value is None:
        return True
    if flag.value.lower() in ("true", "1", "t"):
        return True
    if flag.value.lower() in ("false", "0", "f"):
        return False
    raise ConfigError(f"invalid argument {flag.value!r} for {flag.spelled}: want true or false")


def _flag_int(flag: flags.Flag) -> int:
    try:
        return int(flag.value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid argument {flag.value!r} for {flag.spelled}: want an integer") from None


def _apply_flag(doc: dict, flag: flags.Flag) -> None:
    """Put one flag's value into the document (the no-config-file path)."""
    name, value = flag.name, flag.value
    simple = {"kubeconfig": ("clientConnection", "kubeconfig"), "bind-address": (None, "bindAddress"),
              "healthz-bind-address": (None, "healthzBindAddress"),
              "metrics-bind-address": (None, "metricsBindAddress"), "proxy-mode": (None, "mode"),
              "cluster-cidr": (None, "clusterCIDR"), "ipvs-scheduler": ("ipvs", "scheduler")}
    if name in simple:
        section, key = simple[name]
        (doc[section] if section else doc)[key] = value
    elif name in ("iptables-sync-period", "iptables-min-sync-period", "ipvs-sync-period", "ipvs-min-sync-period"):
        family, _, what = name.partition("-")
        key = "minSyncPeriod" if what.startswith("min") else "syncPeriod"
        if family == "iptables":
            doc["iptables"][key] = doc["nftables"][key] = value  # upstream: iptables-* flags serve nftables too
        else:
            doc["ipvs"][key] = value
    elif name == "masquerade-all":
        doc["iptables"]["masqueradeAll"] = doc["nftables"]["masqueradeAll"] = _flag_bool(flag)
    elif name == "iptables-masquerade-bit":
        doc["iptables"]["masqueradeBit"] = doc["nftables"]["masqueradeBit"] = _flag_int(flag)
    elif name == "iptables-localhost-nodeports":
        doc["iptables"]["localhostNodePorts"] = _flag_bool(flag)
    elif name == "nodeport-addresses":
        doc["nodePortAddresses"] = [v for v in value.split(",") if v.strip()]
    elif name == "ipvs-exclude-cidrs":
        doc["ipvs"]["excludeCIDRs"] = [v for v in value.split(",") if v.strip()]
    elif name in ("healthz-port", "metrics-port"):
        key = "healthzBindAddress" if name == "healthz-port" else "metricsBindAddress"
        host = doc[key].rpartition(":")[0]
        doc[key] = f"{host}:{_flag_int(flag)}" if _flag_int(flag) else ""


def parse(argv: list[str]) -> ProxyConfig:
    """argv -> effective settings; ConfigError with a message fit for the user."""
    try:
        given = flags.split(argv, KNOWN_FLAGS, SHORTHANDS, "pyproxy")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    by_name = {f.name: f for f in given}
    cfg = ProxyConfig()
    config_file = by_name.get("config")
    if config_file:
        doc = load_file(config_file.value)
        cfg.ignored_flags = [f.spelled for f in given if f.name not in WITH_CONFIG_FILE]
    else:
        doc = default_document()
        for flag in given:
            _apply_flag(doc, flag)
    _from_document(doc, cfg)
    cfg.inert_flags = sorted({f.name for f in given} & NO_EFFECT)
    for flag in given:
        if flag.name == "v":
            cfg.verbosity = _flag_int(flag)
        elif flag.name == "hostname-override":
            cfg.hostname = (flag.value or "").strip().lower()
            if not cfg.hostname:
                raise ConfigError("empty hostname-override is invalid")
        elif flag.name == "cleanup":
            cfg.cleanup = _flag_bool(flag)
        elif flag.name == "init-only":
            cfg.init_only = _flag_bool(flag)
        elif flag.name == "write-config-to":
            cfg.write_config_to = flag.value or ""
    if not cfg.hostname:
        cfg.hostname = socket.gethostname().strip().lower()
    return cfg


def render_document(cfg: ProxyConfig) -> str:
    """The effective KubeProxyConfiguration as YAML (what --write-config-to writes)."""
    doc = dict(cfg.document)
    doc["hostnameOverride"] = cfg.hostname
    section = cfg.mode
    doc[section] = {**doc[section], "syncPeriod": format_duration(cfg.sync_period),
                    "minSyncPeriod": format_duration(cfg.min_sync_period)}
    return yaml.safe_dump(doc, sort_keys=True)
