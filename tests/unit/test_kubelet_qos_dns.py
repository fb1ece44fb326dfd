"""QoS classes, pod cgroup parents and pod DNS configuration."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cri import api
from pykubelet.pods import qos
from pykubelet.pods.dns import dns_config, parse_resolv_conf
from pykubelet.pods.envvars import ConfigProblem


def pod(*containers, init=(), spec=None, status=None, uid="u1", namespace="ns1"):
    body = {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(containers)]}
    if init:
        body["initContainers"] = [{"name": f"i{i}", **c} for i, c in enumerate(init)]
    body.update(spec or {})
    p = {"metadata": {"name": "web", "namespace": namespace, "uid": uid}, "spec": body}
    if status:
        p["status"] = status
    return p


GUARANTEED = {"limits": {"cpu": "500m", "memory": "128Mi"}}

# --- qos -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p, expected", [
    (pod({}), "BestEffort"),
    (pod({}, {}), "BestEffort"),
    (pod({"requests": {"ephemeral-storage": "1Gi"}, "limits": {"nvidia.com/gpu": "1"}}), "BestEffort"),
    (pod({"requests": {"cpu": "0", "memory": "0"}}), "BestEffort"),
    (pod(GUARANTEED), "Guaranteed"),  # requests default to limits
    (pod({"requests": {"cpu": "0.5", "memory": "134217728"}, "limits": {"cpu": "500m", "memory": "128Mi"}}),
     "Guaranteed"),
    (pod(GUARANTEED, GUARANTEED), "Guaranteed"),
    (pod(GUARANTEED, {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}),
     "Burstable"),
    (pod({"requests": {"cpu": "100m"}}), "Burstable"),
    (pod({"limits": {"cpu": "1"}}), "Burstable"),  # no memory limit
    (pod(GUARANTEED, {}), "Burstable"),  # a container without limits
    (pod({"requests": {"memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}), "Burstable"),
    (pod(GUARANTEED, init=[{"resources": GUARANTEED}]), "Guaranteed"),
    (pod(GUARANTEED, init=[{"resources": {}}]), "Burstable"),  # the init container has no limits
    (pod({}, init=[{"resources": {"requests": {"cpu": "10m"}}}]), "Burstable"),
    (pod(GUARANTEED, init=[{"resources": GUARANTEED, "restartPolicy": "Always"}]), "Guaranteed"),
    # status.qosClass, set by the API server, wins
    (pod({}, status={"qosClass": "Burstable"}), "Burstable"),
    # pod-level resources decide when set
    (pod({}, spec={"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}), "Guaranteed"),
    (pod({}, spec={"resources": {"limits": {"memory": "1Gi"}}}), "Burstable"),
    (pod({}, spec={"resources": {"requests": {"cpu": "1"}}}), "Burstable"),
    (pod({"requests": {"cpu": "100m"}}, spec={"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}), "Burstable"),
])
def test_qos_class(p, expected):
    assert qos.qos_class(p) == expected


@pytest.mark.parametrize("root", ["", "/"])
@pytest.mark.parametrize("resources, tier", [
    (GUARANTEED, ""), ({"requests": {"cpu": "1m"}}, "burstable/"), ({}, "besteffort/"),
])
def test_pod_cgroup_parent_at_top(root, resources, tier):
    assert qos.pod_cgroup_parent(root, pod(resources)) == f"/kubepods/{tier}podu1"


@pytest.mark.parametrize("root", ["/pynode/n1", "/pynode/n1/", "pynode/n1"])
def test_pod_cgroup_parent_below_a_root(root):
    assert qos.pod_cgroup_parent(root, pod({})) == "/pynode/n1/kubepods/besteffort/podu1"
    assert qos.pod_cgroup_parent(root, pod(GUARANTEED)) == "/pynode/n1/kubepods/podu1"


@pytest.mark.parametrize("text, value", [
    ("500m", Fraction(1, 2)), ("1", 1), (2, 2), ("1.5", Fraction(3, 2)), ("128Mi", 128 * 2**20),
    ("1G", 10**9), ("1e3", 1000), ("100u", Fraction(1, 10**4)), ("1Ki", 1024), ("0.1", Fraction(1, 10)),
])
def test_quantity(text, value):
    assert qos.quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1Qi", "--1", True])
def test_bad_quantity(text):
    with pytest.raises(ValueError):
        qos.quantity(text)


def test_milli_and_whole_values_round_up():
    assert qos.milli_value(qos.quantity("100u")) == 1
    assert qos.milli_value(qos.quantity("1.5")) == 1500
    assert qos.int_value(qos.quantity("1500m")) == 2


def test_aggregate_counts_sidecars_and_init_peaks():
    spec = pod({"requests": {"cpu": "100m"}},
               init=[{"resources": {"requests": {"cpu": "200m"}}, "restartPolicy": "Always"},
                     {"resources": {"requests": {"cpu": "1"}}}])["spec"]
    # regular 100m + sidecar 200m = 300m; the second init container needs 1 + 200m while it runs
    assert qos.aggregate(spec, qos.container_requests) == {"cpu": Fraction(6, 5)}


# --- dns -------------------------------------------------------------------------------------------

HOST_RESOLV = """\
# generated
nameserver 192.0.2.53
nameserver 192.0.2.54
search example.com.   corp.example.com
options timeout:2 attempts:3
"""


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(HOST_RESOLV)
    return path


def dns_pod(policy=None, host_network=False, dns=None, namespace="ns1"):
    spec = {"containers": [{"name": "c"}]}
    if policy:
        spec["dnsPolicy"] = policy
    if host_network:
        spec["hostNetwork"] = True
    if dns is not None:
        spec["dnsConfig"] = dns
    return {"metadata": {"name": "web", "namespace": namespace, "uid": "u1"}, "spec": spec}


CLUSTER = api.DNSConfig(
    servers=["10.96.0.10"],
    searches=["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local", "example.com", "corp.example.com"],
    options=["ndots:5"],
)
HOST = api.DNSConfig(servers=["192.0.2.53", "192.0.2.54"], searches=["example.com", "corp.example.com"],
                     options=["timeout:2", "attempts:3"])


@pytest.mark.parametrize("policy, host_network, expected", [
    (None, False, CLUSTER),  # ClusterFirst is the default
    ("ClusterFirst", False, CLUSTER),
    ("ClusterFirst", True, HOST),  # falls back to Default on the host network
    ("ClusterFirstWithHostNet", True, CLUSTER),
    ("ClusterFirstWithHostNet", False, CLUSTER),
    ("Default", False, HOST),
    ("Default", True, HOST),
    ("None", False, api.DNSConfig()),
    ("Bogus", False, CLUSTER),  # upstream treats an invalid policy as ClusterFirst
])
def test_dns_policies(resolv, policy, host_network, expected):
    warnings = []
    config = dns_config(dns_pod(policy, host_network), cluster_dns=["10.96.0.10"], cluster_domain="cluster.local",
                        host_resolv_conf=resolv, warnings=warnings)
    assert config == expected
    assert warnings == []


def test_cluster_first_without_cluster_dns_falls_back_to_default(resolv):
    warnings = []
    config = dns_config(dns_pod(), cluster_dns=[], cluster_domain="cluster.local", host_resolv_conf=resolv,
                        warnings=warnings)
    assert config == HOST
    assert warnings == [("MissingClusterDNS", 'pod: "web_ns1(u1)". kubelet does not have ClusterDNS IP configured '
                         'and cannot create Pod using "ClusterFirst" policy. Falling back to "Default" policy.')]


def test_no_cluster_domain_keeps_host_searches(resolv):
    config = dns_config(dns_pod(), cluster_dns=["10.96.0.10"], cluster_domain="", host_resolv_conf=resolv)
    assert list(config.searches) == ["example.com", "corp.example.com"]


def test_cluster_searches_are_not_repeated(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 1.1.1.1\nsearch svc.cluster.local other\n")
    config = dns_config(dns_pod(), cluster_dns=["10.96.0.10", "10.96.0.11"], cluster_domain="cluster.local",
                        host_resolv_conf=path)
    assert list(config.servers) == ["10.96.0.10", "10.96.0.11"]
    assert list(config.searches) == ["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local", "other"]


@pytest.mark.parametrize("resolv_conf", [None, ""])
@pytest.mark.parametrize("node_ips, servers", [
    ((), ["127.0.0.1"]), (["10.0.0.5"], ["127.0.0.1"]), (["10.0.0.5", "fd00::5"], ["127.0.0.1", "::1"]),
])
def test_default_without_resolv_conf_uses_localhost(resolv_conf, node_ips, servers):
    config = dns_config(dns_pod("Default"), cluster_dns=[], cluster_domain="cluster.local",
                        host_resolv_conf=resolv_conf, node_ips=node_ips)
    assert config == api.DNSConfig(servers=servers, searches=["."])


def test_cluster_first_without_resolv_conf():
    config = dns_config(dns_pod(), cluster_dns=["10.96.0.10"], cluster_domain="cluster.local", host_resolv_conf=None)
    assert config == api.DNSConfig(servers=["10.96.0.10"], options=["ndots:5"],
                                   searches=["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"])


def test_unreadable_resolv_conf(tmp_path):
    with pytest.raises(ConfigProblem) as caught:
        dns_config(dns_pod(), cluster_dns=["10.96.0.10"], cluster_domain="cluster.local",
                   host_resolv_conf=tmp_path / "missing")
    assert caught.value.reason == "CreatePodSandboxError"
    assert "resolv.conf" in str(caught.value) and "No such file" in str(caught.value)


def test_none_uses_only_the_pod_dns_config(resolv):
    extra = {"nameservers": ["1.2.3.4"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"},
                                                                               {"name": "edns0"}]}
    config = dns_config(dns_pod("None", dns=extra), cluster_dns=["10.96.0.10"], cluster_domain="cluster.local",
                        host_resolv_conf=resolv)
    assert config == api.DNSConfig(servers=["1.2.3.4"], searches=["a.example"], options=["ndots:2", "edns0"])


def test_pod_dns_config_merges_into_cluster_first(resolv):
    extra = {"nameservers": ["10.96.0.10", "1.2.3.4"], "searches": ["cluster.local", "extra.example"],
             "options": [{"name": "ndots", "value": "1"}, {"name": "single-request-reopen"}]}
    config = dns_config(dns_pod(dns=extra), cluster_dns=["10.96.0.10"], cluster_domain="cluster.local",
                        host_resolv_conf=resolv)
    assert list(config.servers) == ["10.96.0.10", "1.2.3.4"]
    assert list(config.searches) == [*CLUSTER.searches, "extra.example"]
    assert list(config.options) == ["ndots:1", "single-request-reopen"]


def test_pod_dns_config_options_override_host_ones(resolv):
    extra = {"options": [{"name": "timeout", "value": "5"}, {"name": "attempts"}]}
    config = dns_config(dns_pod("Default", dns=extra), cluster_dns=[], cluster_domain="cluster.local",
                        host_resolv_conf=resolv)
    assert list(config.options) == ["timeout:5", "attempts"]


def test_nameserver_limit(resolv):
    warnings = []
    extra = {"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}
    config = dns_config(dns_pod(dns=extra), cluster_dns=["10.96.0.10"], cluster_domain="cluster.local",
                        host_resolv_conf=resolv, warnings=warnings)
    assert list(config.servers) == ["10.96.0.10", "1.1.1.1", "2.2.2.2"]
    assert warnings == [("DNSConfigForming", "Nameserver limits were exceeded, some nameservers have been omitted, "
                                             "the applied nameserver line is: 10.96.0.10 1.1.1.1 2.2.2.2")]


@pytest.mark.parametrize("searches, kept", [
    ([f"d{i}.example" for i in range(40)], 32),  # at most 32 domains
    (["x" * 254, "ok.example"], 1),  # a domain over 253 characters is dropped
    ([("y" * 200) + str(i) for i in range(15)], 10),  # at most 2048 characters of search line
])
def test_search_limits(searches, kept):
    warnings = []
    config = dns_config(dns_pod("None", dns={"searches": searches}), cluster_dns=[], cluster_domain="",
                        host_resolv_conf=None, warnings=warnings)
    assert len(config.searches) == kept
    assert len(" ".join(config.searches)) <= 2048
    assert [w[0] for w in warnings] == ["DNSConfigForming"]
    assert warnings[0][1].startswith("Search Line limits were exceeded")


@pytest.mark.parametrize("text, expected", [
    (HOST_RESOLV, (["192.0.2.53", "192.0.2.54"], ["example.com", "corp.example.com"], ["timeout:2", "attempts:3"])),
    ("search a b\nsearch c.\n", ([], ["c"], [])),  # the last search line wins
    ("search . a\n", ([], ["a"], [])),
    ("options ndots:1 rotate\noptions ndots:3\n", ([], [], ["rotate", "ndots:3"])),
    ("  # comment\nnameserver\nnameserver 9.9.9.9 extra\n", (["9.9.9.9"], [], [])),
    ("", ([], [], [])),
])
def test_parse_resolv_conf(text, expected):
    assert parse_resolv_conf(text) == expected
