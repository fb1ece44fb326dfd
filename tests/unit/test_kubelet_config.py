"""pykubelet's configuration: upstream kubelet flags and the KubeletConfiguration file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pykubelet.config import flags
from pykubelet.config.kubeletconfig import (
    ConfigError,
    KubeletConfig,
    Taint,
    format_byte_size,
    format_duration,
    parse,
    parse_duration,
    parse_quantity,
)

# What kubeadm v1.36 writes to /var/lib/kubelet/config.yaml (its defaults, marshalled with
# every zero value), plus settings a cluster commonly adds.
KUBEADM_CONFIG = """\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: ""
cpuManagerReconcilePeriod: 0s
crashLoopBackOff: {}
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
"""

CUSTOMIZED = """\
nodeStatusUpdateFrequency: 4s
runtimeRequestTimeout: 15m
syncFrequency: 1m30s
fileCheckFrequency: 500ms
shutdownGracePeriod: 30s
shutdownGracePeriodCriticalPods: 10s
containerLogMaxSize: 50Mi
containerLogMaxFiles: 3
maxPods: 250
podCIDR: 10.244.1.0/24
serializeImagePulls: false
failSwapOn: false
healthzPort: 0
imageGCHighThresholdPercent: 90
imageGCLowThresholdPercent: 70
systemReserved:
  cpu: 500m
  memory: 1Gi
kubeReserved:
  memory: 512Mi
  pid: "1000"
evictionHard:
  memory.available: 200Mi
registerWithTaints:
- key: dedicated
  value: infra
  effect: NoSchedule
- key: node.example.com/gpu
  effect: PreferNoSchedule
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_file(tmp_path: Path, extra: str = "") -> Path:
    return write(tmp_path, KUBEADM_CONFIG + extra)


def error(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(argv)
    return str(caught.value)


# --- defaults -----------------------------------------------------------------------------------

def test_defaults_without_a_config_file_are_upstreams_command_line_defaults():
    config = parse([])
    assert isinstance(config, KubeletConfig)
    assert config.config_file is None
    assert config.kubeconfig == Path("/etc/kubernetes/kubelet.conf")
    assert config.bootstrap_kubeconfig is None
    assert config.cert_dir == Path("/var/lib/kubelet/pki")
    assert config.root_dir == Path("/var/lib/kubelet")
    assert (config.pod_infra_container_image, config.hostname_override) == (None, None)
    assert (config.node_ip, config.node_ips, config.node_labels) == (None, [], {})
    assert config.verbosity == 0
    assert (config.address, config.port) == ("0.0.0.0", 10250)
    assert (config.healthz_bind_address, config.healthz_port) == ("127.0.0.1", 10248)
    # options.applyLegacyDefaults: without --config the kubelet keeps its old flag defaults.
    assert config.authentication == {
        "x509": {"clientCAFile": ""},
        "webhook": {"enabled": False, "cacheTTL": "2m0s"},
        "anonymous": {"enabled": True},
    }
    assert config.authorization == {
        "mode": "AlwaysAllow", "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"}}
    assert config.eviction_hard == {}  # only defaulted when a config file is loaded
    assert (config.cluster_dns, config.cluster_domain) == ([], "")
    assert (config.cgroup_driver, config.cgroup_root) == ("cgroupfs", "")
    assert config.container_runtime_endpoint == "unix:///run/containerd/containerd.sock"
    assert (config.max_pods, config.pod_cidr) == (110, None)
    assert (config.register_node, config.register_with_taints) == (True, [])
    assert config.static_pod_path is None
    assert config.node_status_update_frequency == 10
    assert config.node_status_report_frequency == 300
    assert config.node_lease_duration_seconds == 40
    assert (config.system_reserved, config.kube_reserved) == ({}, {})
    assert (config.shutdown_grace_period, config.shutdown_grace_period_critical_pods) == (0, 0)
    assert config.fail_swap_on is True
    assert (config.rotate_certificates, config.server_tls_bootstrap) == (False, False)
    assert (config.tls_cert_file, config.tls_private_key_file) == (None, None)
    assert (config.container_log_max_size, config.container_log_max_files) == (10 * 1024 * 1024, 5)
    assert (config.image_gc_high_threshold_percent, config.image_gc_low_threshold_percent) == (85, 80)
    assert config.serialize_image_pulls is True
    assert config.runtime_request_timeout == 120
    assert (config.file_check_frequency, config.sync_frequency) == (20, 60)
    assert config.warnings == []


def test_a_minimal_config_file_gets_the_v1beta1_defaults(tmp_path):
    path = write(tmp_path, "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
    config = parse([f"--config={path}"])
    assert config.config_file == path
    assert config.authentication == {
        "x509": {"clientCAFile": ""},
        "webhook": {"enabled": True, "cacheTTL": "2m0s"},
        "anonymous": {"enabled": False},
    }
    assert config.authorization["mode"] == "Webhook"
    assert config.eviction_hard == {
        "memory.available": "100Mi",
        "nodefs.available": "10%",
        "nodefs.inodesFree": "5%",
        "imagefs.available": "15%",
        "imagefs.inodesFree": "5%",
    }
    assert config.warnings == []


def test_results_do_not_share_mutable_defaults(tmp_path):
    first = parse([f"--config={config_file(tmp_path)}"])
    first.eviction_hard["memory.available"] = "1Gi"
    first.cluster_dns.append("10.0.0.1")
    second = parse([f"--config={config_file(tmp_path)}"])
    assert second.eviction_hard["memory.available"] == "100Mi"
    assert second.cluster_dns == ["10.96.0.10"]
    assert dataclasses.replace(second, max_pods=5).max_pods == 5


# --- the kubeadm file ---------------------------------------------------------------------------

def test_kubeadm_config_file(tmp_path):
    config = parse(["--config", str(config_file(tmp_path))])
    assert config.authentication == {
        "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
        "webhook": {"enabled": True, "cacheTTL": "2m0s"},  # 0s means unset
        "anonymous": {"enabled": False},
    }
    assert config.authorization == {
        "mode": "Webhook", "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s"}}
    assert config.cgroup_driver == "systemd"
    assert (config.cluster_dns, config.cluster_domain) == (["10.96.0.10"], "cluster.local")
    assert config.container_runtime_endpoint == "unix:///run/containerd/containerd.sock"  # "" is unset
    assert config.static_pod_path == Path("/etc/kubernetes/manifests")
    assert config.rotate_certificates is True
    assert (config.node_status_update_frequency, config.node_status_report_frequency) == (10, 300)
    assert (config.sync_frequency, config.file_check_frequency, config.runtime_request_timeout) == (60, 20, 120)
    assert (config.healthz_bind_address, config.healthz_port) == ("127.0.0.1", 10248)
    assert len(config.eviction_hard) == 5
    assert config.warnings == []  # every field kubeadm writes is either implemented or zero


def test_customized_config_file_durations_quantities_and_taints(tmp_path):
    config = parse(["--config", str(config_file(tmp_path, CUSTOMIZED))])
    assert config.node_status_update_frequency == 4
    assert config.node_status_report_frequency == 4  # follows an explicit update frequency
    assert config.runtime_request_timeout == 900
    assert config.sync_frequency == 90
    assert config.file_check_frequency == 0.5
    assert (config.shutdown_grace_period, config.shutdown_grace_period_critical_pods) == (30, 10)
    assert (config.container_log_max_size, config.container_log_max_files) == (50 * 2**20, 3)
    assert (config.max_pods, config.pod_cidr) == (250, "10.244.1.0/24")
    assert config.serialize_image_pulls is False
    assert config.fail_swap_on is False  # a pointer upstream: an explicit false is kept
    assert config.healthz_port == 0  # likewise: 0 disables healthz
    assert (config.image_gc_high_threshold_percent, config.image_gc_low_threshold_percent) == (90, 70)
    assert config.system_reserved == {"cpu": "500m", "memory": "1Gi"}
    assert config.kube_reserved == {"memory": "512Mi", "pid": "1000"}
    assert config.eviction_hard == {"memory.available": "200Mi"}  # replaces the defaults
    assert config.register_with_taints == [
        Taint("dedicated", "infra", "NoSchedule"), Taint("node.example.com/gpu", "", "PreferNoSchedule")]


def test_configz_writes_sizes_as_quantity_strings_as_upstream(tmp_path):
    # /configz: the node e2e suite decodes it into upstream's KubeletConfiguration, where a size is a string.
    effective = parse(["--config", str(config_file(tmp_path, CUSTOMIZED))]).effective
    assert effective["containerLogMaxSize"] == "50Mi"
    assert parse([]).effective["containerLogMaxSize"] == "10Mi"
    assert [format_byte_size(n) for n in (0, 1000, 1024, 3 * 2**30, 2**30 + 1)] == [
        "0", "1000", "1Ki", "3Gi", "1073741825"]


def test_allowed_unsafe_sysctls_from_the_file_and_the_flag(tmp_path):
    path = config_file(tmp_path, "allowedUnsafeSysctls:\n- kernel.msg*\n")
    assert parse(["--config", str(path)]).allowed_unsafe_sysctls == ["kernel.msg*"]
    assert parse(["--allowed-unsafe-sysctls=net.core.somaxconn,kernel.sem"]).allowed_unsafe_sysctls == [
        "net.core.somaxconn", "kernel.sem"]
    assert parse([]).allowed_unsafe_sysctls == []
    with pytest.raises(ConfigError, match="invalid sysctl pattern"):
        parse(["--config", str(config_file(tmp_path, "allowedUnsafeSysctls:\n- 'Kernel.*'\n"))])


def test_merge_default_eviction_settings(tmp_path):
    path = config_file(tmp_path, "mergeDefaultEvictionSettings: true\nevictionHard:\n  memory.available: 1Gi\n")
    config = parse(["--config", str(path)])
    assert config.eviction_hard["memory.available"] == "1Gi"
    assert config.eviction_hard["imagefs.inodesFree"] == "5%"


def test_max_parallel_image_pulls_turns_off_serialized_pulls(tmp_path):
    config = parse(["--config", str(config_file(tmp_path, "maxParallelImagePulls: 3\n"))])
    assert config.serialize_image_pulls is False


def test_relative_paths_resolve_against_the_config_files_directory(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc", KUBEADM_CONFIG.replace("/etc/kubernetes/pki/ca.crt", "pki/ca.crt").replace(
        "/etc/kubernetes/manifests", "manifests") + "tlsCertFile: ../tls/kubelet.crt\ntlsPrivateKeyFile: kubelet.key\n")
    monkeypatch.chdir(tmp_path)
    config = parse(["--config", "etc/config.yaml", "--cert-dir", "pki"])
    assert config.config_file == tmp_path / "etc/config.yaml"
    assert config.static_pod_path == tmp_path / "etc/manifests"
    assert config.authentication["x509"]["clientCAFile"] == str(tmp_path / "etc/pki/ca.crt")
    assert config.tls_cert_file == tmp_path / "tls/kubelet.crt"
    assert config.tls_private_key_file == tmp_path / "etc/kubelet.key"
    assert config.cert_dir == Path("pki")  # flags are taken as given, like upstream's


def test_unknown_and_unimplemented_fields_are_warnings(tmp_path):
    path = config_file(tmp_path, "maxPodz: 10\ncpuManagerPolicy: static\nfeatureGates: {}\n"
                                 "authentication:\n  oidc: {}\n  webhook: {enabled: true}\n")
    config = parse(["--config", str(path)])
    assert config.warnings == [
        f"{path}: duplicate field \"authentication\"; the last one is used",
        f"{path}: unknown field \"authentication.oidc\"; ignored",
        f"{path}: unknown field \"maxPodz\"; ignored",
        f"{path}: cpuManagerPolicy is not implemented by pykubelet; ignored",
    ]
    assert config.authentication["x509"]["clientCAFile"] == ""  # the last authentication wins


# --- flags --------------------------------------------------------------------------------------

def test_flags_override_the_file(tmp_path):
    path = config_file(tmp_path, CUSTOMIZED)
    config = parse([
        "--config", str(path),
        "--kubeconfig=/etc/kubernetes/kubelet.conf", "--bootstrap-kubeconfig", "/etc/kubernetes/bootstrap-kubelet.conf",
        "--container-runtime-endpoint=unix:///var/run/crio/crio.sock",
        "--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule,a=b:NoExecute",
        "--max-pods", "20", "--cgroup-driver=cgroupfs", "--sync-frequency=2m",
        "--eviction-hard=memory.available<500Mi,nodefs.available<5%",
        "--fail-swap-on", "--rotate-server-certificates=true", "--cluster-dns=10.96.0.10,fd00::a",
        "--anonymous-auth=false", "--authorization-mode", "AlwaysAllow",
        "--hostname-override", " Node-1 ", "--node-ip=10.0.0.5,fd00::5",
        "--node-labels", "node.kubernetes.io/exclude-from-external-load-balancers,tier=web",
        "--node-labels=zone=a", "--v=4", "--root-dir", "/srv/kubelet",
    ])
    assert config.bootstrap_kubeconfig == Path("/etc/kubernetes/bootstrap-kubelet.conf")
    assert config.container_runtime_endpoint == "unix:///var/run/crio/crio.sock"
    assert config.register_with_taints == [
        Taint("node-role.kubernetes.io/control-plane", "", "NoSchedule"), Taint("a", "b", "NoExecute")]
    assert (config.max_pods, config.cgroup_driver, config.sync_frequency) == (20, "cgroupfs", 120)
    assert config.eviction_hard == {"memory.available": "500Mi", "nodefs.available": "5%"}
    assert (config.fail_swap_on, config.server_tls_bootstrap) == (True, True)
    assert config.cluster_dns == ["10.96.0.10", "fd00::a"]
    assert config.authentication["anonymous"]["enabled"] is False
    assert config.authorization["mode"] == "AlwaysAllow"
    assert config.hostname_override == "node-1"
    assert (config.node_ip, config.node_ips) == ("10.0.0.5", ["10.0.0.5", "fd00::5"])
    assert config.node_labels == {
        "node.kubernetes.io/exclude-from-external-load-balancers": "", "tier": "web", "zone": "a"}
    assert (config.verbosity, config.root_dir) == (4, Path("/srv/kubelet"))
    assert config.node_status_update_frequency == 4  # from the file: no flag given
    # Upstream prints a deprecation notice for every flag backed by a config field but --v.
    assert "--max-pods is deprecated upstream: set maxPods in the --config file instead" in config.warnings
    assert not any(w.startswith(("--v ", "--node-ip", "--kubeconfig")) for w in config.warnings)


@pytest.mark.parametrize("argv, verbosity", [
    (["-v", "2"], 2), (["-v=3"], 3), (["-v5"], 5), (["--v", "6"], 6), (["--v=0x10"], 16), (["-hv7"], 7),
])
def test_verbosity_forms(argv, verbosity):
    assert parse(argv).verbosity == verbosity


def test_verbosity_from_the_file_and_the_flag(tmp_path):
    path = write(tmp_path, "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                           "logging:\n  verbosity: 3\n  format: json\n")
    assert parse(["--config", str(path)]).verbosity == 3
    config = parse(["--config", str(path), "-v", "1"])
    assert config.verbosity == 1
    assert config.warnings == [f"{path}: logging.format is not implemented by pykubelet; ignored"]


def test_boolean_flag_forms():
    assert parse(["--register-node=false"]).register_node is False
    assert parse(["--register-node=F", "--register-node"]).register_node is True
    assert parse(["--fail-swap-on=0"]).fail_swap_on is False


def test_repeated_flags_last_wins_except_maps_and_lists():
    config = parse(["--max-pods=1", "--max-pods=2", "--cluster-dns=10.0.0.1", "--cluster-dns=10.0.0.2",
                    "--system-reserved=cpu=1", "--system-reserved=memory=1Gi",
                    "--register-with-taints=a:NoSchedule", "--register-with-taints=b:NoSchedule"])
    assert config.max_pods == 2
    assert config.cluster_dns == ["10.0.0.1", "10.0.0.2"]
    assert config.system_reserved == {"cpu": "1", "memory": "1Gi"}
    assert config.register_with_taints == [Taint("b", "", "NoSchedule")]


def test_underscores_in_flag_names_and_double_dash():
    config = parse(["--max_pods=7", "--"])
    assert config.max_pods == 7


def test_pod_infra_container_image_is_accepted_with_a_warning():
    config = parse(["--pod-infra-container-image=registry.k8s.io/pause:3.10.2"])
    assert config.pod_infra_container_image == "registry.k8s.io/pause:3.10.2"
    assert any("removed from the upstream kubelet" in w for w in config.warnings)


@pytest.mark.parametrize("argv, flag", [
    (["--max-open-files=1000"], "--max-open-files"),
    (["--max-open-files", "1000"], "--max-open-files"),
    (["--rotate-server-certificates"], "--rotate-server-certificates"),
    (["--feature-gates", "A=true,B=false"], "--feature-gates"),
    (["--enable-server=false"], "--enable-server"),
    (["--housekeeping_interval", "10s"], "--housekeeping-interval"),
    (["--config-dir", "/etc/kubelet.conf.d"], "--config-dir"),
    (["--version"], "--version"),
])
def test_upstream_flags_pykubelet_does_not_implement_are_accepted(argv, flag):
    config = parse([*argv, "--max-pods", "33"])
    assert config.max_pods == 33  # the ignored flag's value did not swallow the next flag
    assert any(w.startswith(flag) for w in config.warnings), config.warnings


def test_a_value_taking_flag_takes_the_next_argument_whatever_it_is():
    # pflag semantics: "--max-open-files --max-pods" gives --max-open-files the value "--max-pods".
    assert error(["--max-open-files", "--max-pods", "5"]).startswith("unexpected argument '5'")


def test_flag_table_knows_upstream_flags():
    assert flags.UPSTREAM_FLAGS["rotate-server-certificates"] == "bool"
    assert flags.UPSTREAM_FLAGS["max-open-files"] == "value"
    assert flags.UPSTREAM_FLAGS["register-with-taints"] == "value"
    assert "pod-infra-container-image" not in flags.UPSTREAM_FLAGS
    assert "container-runtime-endpoint" in flags.DEPRECATED_FLAGS
    assert not {"v", "node-ip", "kubeconfig", "config", "provider-id"} & flags.DEPRECATED_FLAGS
    assert len(flags.UPSTREAM_FLAGS) > 140


# --- errors -------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = error(["--config", str(path)])
    assert message.startswith(f"{path}: cannot read the kubelet config file")
    assert "No such file" in message


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, KUBEADM_CONFIG + "clusterDNS: [10.96.0.10\n")
    message = error(["--config", str(path)])
    assert message.startswith(f"{path}: invalid YAML")
    assert "line" in message


@pytest.mark.parametrize("text, expected", [
    ("", "the kubelet config file is empty"),
    ("- a\n", "expected a KubeletConfiguration mapping, got list"),
    ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
     'kind: expected "KubeletConfiguration", got "KubeProxyConfiguration"'),
    ("apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n",
     'apiVersion: expected "kubelet.config.k8s.io/v1beta1", got "kubelet.config.k8s.io/v1"'),
    ("kind: KubeletConfiguration\n", "apiVersion: expected \"kubelet.config.k8s.io/v1beta1\", missing"),
])
def test_wrong_document(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert error(["--config", str(path)]) == f"{path}: {expected}"


@pytest.mark.parametrize("extra, expected", [
    ("maxPods: \"110\"\n", 'maxPods: expected an integer, got string'),
    ("maxPods: -1\n", "maxPods: -1 must be between 0 and 2147483647, inclusive"),
    ("port: 70000\n", "port: 70000 must be between 1 and 65535, inclusive"),
    ("healthzPort: -1\n", "healthzPort: -1 must be between 0 and 65535, inclusive"),
    ("failSwapOn: \"no\"\n", 'failSwapOn: expected true or false, got string'),
    ("clusterDNS: 10.96.0.10\n", "clusterDNS: expected a list of IP addresses, got string"),
    ("authentication: true\n", "authentication: expected a mapping, got boolean true"),
    ("nodeStatusUpdateFrequency: abc\n", 'nodeStatusUpdateFrequency: invalid duration "abc"'),
    ("syncFrequency: 10\n", 'syncFrequency: expected a duration string such as "10s", got integer 10'),
    ("syncFrequency: -1s\n", 'syncFrequency: "-1s" must not be negative'),
    ("authentication:\n  webhook:\n    cacheTTL: 2 minutes\n",
     'authentication.webhook.cacheTTL: invalid duration "2 minutes"'),
    ("containerLogMaxSize: 10MB\n", 'containerLogMaxSize: invalid quantity "10MB"'),
    ("containerLogMaxFiles: 1\n", "containerLogMaxFiles: 1 must be between 2 and 2147483647, inclusive"),
    ("containerLogMaxWorkers: 0\n", "containerLogMaxWorkers: 0 must be between 1 and 2147483647, inclusive"),
    ("containerLogMonitorInterval: 1s\n",
     'containerLogMonitorInterval: "1s" must be a positive time duration greater than or equal to 3s'),
    ("cgroupDriver: cgroupsv2\n", 'cgroupDriver: "cgroupsv2" must be one of cgroupfs, systemd'),
    ("authorization:\n  mode: RBAC\n", 'authorization.mode: "RBAC" must be one of Webhook, AlwaysAllow'),
    ("address: 10.0.0.300\n", 'address: invalid IP address "10.0.0.300"'),
    ("clusterDNS: [10.96.0.10, dns.local]\n", 'clusterDNS: invalid IP address "dns.local"'),
    ("podCIDR: 10.244.0.0/33\n", 'podCIDR: invalid CIDR "10.244.0.0/33"'),
    ("imageGCHighThresholdPercent: 101\n", "imageGCHighThresholdPercent: 101 must be between 0 and 100, inclusive"),
    ("nodeLeaseDurationSeconds: -5\n", "nodeLeaseDurationSeconds: -5 must be between 1 and 2147483647, inclusive"),
    ("shutdownGracePeriod: 500ms\n", 'shutdownGracePeriod: "500ms" must be either zero or otherwise >= 1s'),
    ("evictionHard:\n  memory.free: 1Gi\n", 'evictionHard: unsupported eviction signal "memory.free"'),
    ("evictionHard:\n  nodefs.available: 110%\n",
     'evictionHard: nodefs.available: percentage "110%" must be between 0% and 100%'),
    ("systemReserved:\n  pid: 1000\n", "systemReserved: pid: expected a string, got integer 1000 (quote it)"),
    ("systemReserved:\n  gpu: \"1\"\n", 'systemReserved: cannot reserve "gpu": only cpu, ephemeral-storage, memory, pid'),
    ("registerWithTaints:\n- key: a\n  effect: NoPlace\n",
     'registerWithTaints: [0]: invalid taint effect "NoPlace": must be one of NoSchedule, PreferNoSchedule, NoExecute'),
    ("registerWithTaints:\n- key: a\n", "registerWithTaints: [0]: expected a string, got null"),
    ("registerWithTaints:\n- key: -bad-\n  effect: NoSchedule\n", 'registerWithTaints: [0]: invalid key "-bad-"'),
    ("registerWithTaints:\n- {key: a, effect: NoSchedule}\n- {key: a, value: b, effect: NoSchedule}\n",
     "registerWithTaints: [1]: duplicate taint a:NoSchedule"),
])
def test_bad_field_values_name_the_file_and_field(tmp_path, extra, expected):
    path = config_file(tmp_path, extra)
    message = error(["--config", str(path)])
    assert message.startswith(f"{path}: {expected}"), message


def test_checks_across_fields(tmp_path):
    path = config_file(tmp_path, "imageGCHighThresholdPercent: 60\n")
    assert "imageGCLowThresholdPercent (--image-gc-low-threshold) 80 must be less than" in error(["--config", str(path)])
    path = config_file(tmp_path, "shutdownGracePeriod: 10s\nshutdownGracePeriodCriticalPods: 20s\n")
    assert "shutdownGracePeriodCriticalPods 20s must be <= shutdownGracePeriod 10s" in error(["--config", str(path)])
    assert "must be given together" in error(["--tls-cert-file=/x.crt"])


@pytest.mark.parametrize("argv, expected", [
    (["--foo"], "unknown flag: --foo"),
    (["--foo=bar"], "unknown flag: --foo"),
    (["-kubeconfig=/x"], "unknown shorthand flag: 'k' in -kubeconfig=/x"),
    (["--windows-service"], "unknown flag: --windows-service"),  # Windows builds only
    (["/etc/kubernetes/kubelet.conf"], "unexpected argument '/etc/kubernetes/kubelet.conf': the kubelet takes only flags"),
    (["--", "run"], "unexpected argument 'run'"),
    (["--fail-swap-on", "false"], "unexpected argument 'false': the kubelet takes only flags "
                                  "(a boolean flag takes its value as --fail-swap-on=false)"),
    (["--kubeconfig"], "flag needs an argument: --kubeconfig"),
    (["--port=abc"], '--port: invalid integer "abc"'),
    (["--port=0"], "--port: 0 must be between 1 and 65535, inclusive"),
    (["--fail-swap-on=maybe"], '--fail-swap-on: invalid boolean "maybe"'),
    (["--enable-server=maybe"], '--enable-server: invalid boolean "maybe"'),
    (["--sync-frequency=1x"], '--sync-frequency: invalid duration "1x"'),
    (["--container-runtime-endpoint="], "--container-runtime-endpoint: must not be empty"),
    (["-v=-1"], "-v: -1 must be between 0 and 4294967295, inclusive"),
    (["--node-ip=10.0.0.256"], '--node-ip: invalid IP address "10.0.0.256"'),
    (["--node-ip=10.0.0.1,10.0.0.2"], '--node-ip: "10.0.0.1,10.0.0.2" must contain either a single IP or a dual-stack pair'),
    (["--node-ip=0.0.0.0,fd00::1"], "--node-ip: \"0.0.0.0,fd00::1\": a dual-stack node IP cannot include"),
    (["--address=localhost"], '--address: invalid IP address "localhost"'),
    (["--hostname-override=  "], "--hostname-override: empty hostname is invalid"),
    (["--node-labels=-bad=x"], '--node-labels: invalid label key "-bad"'),
    (["--node-labels=a/b/c=x"], '--node-labels: invalid label key "a/b/c": at most one \'/\' allowed'),
    (["--node-labels=tier=" + "x" * 64], "--node-labels: invalid label value"),
    (["--node-labels=node-role.kubernetes.io/worker="],
     '--node-labels: label "node-role.kubernetes.io/worker" is in the kubernetes.io or k8s.io namespace'),
    (["--register-with-taints=a=b"], '--register-with-taints: invalid taint spec "a=b"'),
    (["--register-with-taints=a=b:Never"], '--register-with-taints: [0]: invalid taint effect "Never"'),
    (["--register-with-taints=a:NoSchedule,a:NoSchedule"], "--register-with-taints: [1]: duplicate taint"),
    (["--eviction-hard=memory.available=1Gi"], '--eviction-hard: malformed pair "memory.available=1Gi", expected key<value'),
    (["--system-reserved=cpu"], '--system-reserved: malformed pair "cpu", expected key=value'),
    (["--cluster-dns=10.96.0.10,"], '--cluster-dns: invalid IP address ""'),
])
def test_bad_flags_name_the_flag(argv, expected):
    message = error(argv)
    assert message.startswith(expected), message


def test_flags_are_checked_before_the_file_is_read(tmp_path):
    assert error(["--config", str(tmp_path / "missing.yaml"), "--max-pods=x"]) == '--max-pods: invalid integer "x"'


# --- durations and quantities -------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("0", 0), ("0s", 0), ("-0", 0), ("10s", 10), ("1m0s", 60), ("1h30m", 5400), ("300ms", 0.3),
    ("1.5h", 5400), (".5s", 0.5), ("1.s", 1), ("2h45m30.5s", 9930.5), ("100us", 1e-4), ("100µs", 1e-4),
    ("100μs", 1e-4), ("1ns", 1e-9), ("-1m", -60), ("+5s", 5), ("1m1m", 120),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "10", "1sec", "1 s", "1.5.5s", ".s", "-", "1d", "abc", "1h-5m",
                                  "9999999999h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (30, "30s"), (120, "2m0s"), (3600, "1h0m0s"), (5400, "1h30m0s"), (1.5, "1.5s"),
    (0.3, "300ms"), (0.0015, "1.5ms"), (2e-6, "2µs"), (1e-9, "1ns"), (-90, "-1m30s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("10", 10), ("100Mi", 100 * 2**20), ("1Ki", 1024), ("1.5Gi", 3 * 2**29), ("1G", 10**9),
    ("1k", 1000), ("500m", 0.5), ("250m", 0.25), ("1000m", 1), ("1e3", 1000), ("1E3", 1000),
    ("5e-1", 0.5), ("1E", 10**18), ("2Ei", 2 * 2**60), ("100n", 1e-7), ("+1", 1), ("-1", -1),
    (".5", 0.5), ("1.", 1), ("0.1", 0.1),
])
def test_parse_quantity(text, value):
    result = parse_quantity(text)
    assert result == pytest.approx(value)
    assert isinstance(result, int) == isinstance(value, int)


@pytest.mark.parametrize("text", ["", "Mi", "1MB", "1mi", "1 Mi", "1e", "1Ki1", ".", "1..5", "--1", "0x10", "10%"])
def test_parse_quantity_rejects(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_binary_garbage_and_non_utf8_are_config_errors_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"}{ not: [yaml\n\x00\x01binary")
    assert error(["--config", str(garbage)]).startswith(f"{garbage}: invalid YAML")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"\xff\xfe")
    assert error(["--config", str(latin)]) == f"{latin}: the kubelet config file is not UTF-8 text (byte 0)"


def test_pod_pids_limit_from_the_file_or_the_flag(tmp_path):
    assert parse([]).pod_pids_limit == -1
    assert parse(["--config", str(write(tmp_path, KUBEADM_CONFIG + "podPidsLimit: 4096\n"))]).pod_pids_limit == 4096
    assert parse(["--pod-max-pids=100"]).pod_pids_limit == 100
    assert "podPidsLimit" in error(["--config", str(write(tmp_path, KUBEADM_CONFIG + "podPidsLimit: -5\n"))])
