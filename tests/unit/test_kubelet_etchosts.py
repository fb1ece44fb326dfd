"""The kubelet-managed /etc/hosts: upstream's content for pod-network and host-network pods, and when it is mounted."""

from __future__ import annotations

from pykubelet.pods import etchosts

ALIASES = [{"ip": "123.45.67.89", "hostnames": ["foo", "bar"]}, {"ip": "10.0.0.9", "hostnames": ["baz"]}]


def pod(**spec):
    return {"metadata": {"name": "web", "namespace": "ns", "uid": "u1"}, "spec": {"containers": [], **spec}}


def test_a_pod_network_pod_gets_localhost_lines_its_ips_with_its_name_and_its_aliases(tmp_path):
    path = etchosts.write(tmp_path, pod(hostAliases=ALIASES), ["10.222.1.5"], "web", "")
    assert path == tmp_path / "etc-hosts" and oct(path.stat().st_mode & 0o777) == "0o644"
    assert path.read_text() == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n"
        "10.222.1.5\tweb\n"
        "\n# Entries added by HostAliases.\n123.45.67.89\tfoo\tbar\n10.0.0.9\tbaz\n")


def test_a_subdomain_gives_the_fully_qualified_name_before_the_short_one(tmp_path):
    text = etchosts.write(tmp_path, pod(), ["10.222.1.5", "fd00::5"], "web", "sub.ns.svc.cluster.local").read_text()
    assert "10.222.1.5\tweb.sub.ns.svc.cluster.local\tweb\n" in text
    assert "fd00::5\tweb.sub.ns.svc.cluster.local\tweb\n" in text
    assert "HostAliases" not in text


def test_a_host_network_pod_gets_the_nodes_file_under_its_own_header(tmp_path):
    node_hosts = tmp_path / "hosts"
    node_hosts.write_text("127.0.0.1 localhost\n10.1.1.1 node-a\n")
    text = etchosts.write(tmp_path / "pod", pod(hostNetwork=True, hostAliases=ALIASES[:1]), ["10.1.1.1"], "x", "",
                          node_hosts_file=node_hosts).read_text()
    assert text == ("# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n10.1.1.1 node-a\n"
                    "\n# Entries added by HostAliases.\n123.45.67.89\tfoo\tbar\n")


def test_no_file_for_a_container_mounting_etc_hosts_itself_or_a_pod_without_an_ip_yet():
    plain = {"name": "c"}
    own = {"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/etc/hosts"}]}
    assert etchosts.wanted(pod(), plain, ["10.222.1.5"])
    assert not etchosts.wanted(pod(), own, ["10.222.1.5"])
    assert not etchosts.wanted(pod(), plain, [])
    assert etchosts.wanted(pod(hostNetwork=True), plain, [])
