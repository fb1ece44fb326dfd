"""pyproxy.iptables.render: the rules upstream's iptables proxier would write."""

from __future__ import annotations

import re

import pytest

from pyproxy import iptables as ipt
from pyproxy.backend import NodeContext, SyncFailed
from pyproxy.model import Endpoint, ServicePort

NODE = dict(node_name="n1", node_ips=["10.233.0.1"], cluster_cidr="10.231.0.0/16")


def sp(name="svc1", ns="ns1", port_name="p80", port=80, proto="TCP", **kw) -> ServicePort:
    kw.setdefault("cluster_ips", ("10.232.0.10",))
    return ServicePort(namespace=ns, name=name, port_name=port_name, protocol=proto, port=port, **kw)


def ep(ip, port=80, **kw) -> Endpoint:
    return Endpoint(ip=ip, port=port, **kw)


def nat_lines(text: str) -> list[str]:
    return text.split("*nat\n")[1].split("COMMIT")[0].splitlines()


def filter_lines(text: str) -> list[str]:
    return text.split("*filter\n")[1].split("COMMIT")[0].splitlines()


def rules(lines: list[str], chain: str) -> list[str]:
    return [line for line in lines if line.startswith(f"-A {chain} ")]


def test_chain_names_match_upstream_hashes():
    # Expected names are from upstream's proxier_test.go (v1.36).
    s1 = sp()
    assert ipt.svc_chain(s1) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert ipt.sep_chain(s1, ep("10.180.0.1")) == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    s5 = sp(name="svc5", ns="ns5")
    assert ipt.fw_chain(s5) == "KUBE-FW-NUKIZ6OKUXPJNT4C"
    assert ipt.ext_chain(s5) == "KUBE-EXT-NUKIZ6OKUXPJNT4C"
    assert ipt.sep_chain(s5, ep("10.180.0.3")) == "KUBE-SEP-I77PXRDZVX7PMWMN"
    assert ipt.sep_chain(sp(name="svc3", ns="ns3"), ep("10.180.0.3")) == "KUBE-SEP-OYPFS5VJICHGATKP"
    # Protocol is part of the hash; names fit iptables' 28 characters.
    assert ipt.svc_chain(sp(proto="UDP")) != ipt.svc_chain(s1)
    assert len(ipt.sep_chain(s1, ep("10.180.0.1"))) <= 28


def test_basic_cluster_ip_matches_upstream_shape():
    text = ipt.render([sp()], {("ns1", "svc1", "p80"): [ep("10.180.0.1")]}, **NODE)
    nat = nat_lines(text)
    assert "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 10.232.0.10 " \
           "--dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O" in nat
    assert rules(nat, "KUBE-SVC-XPGD46QRK7WJZT7O")[0].endswith("! -s 10.231.0.0/16 -j KUBE-MARK-MASQ")
    assert rules(nat, "KUBE-SEP-SXIVWICOYRO3J4NJ") == [
        '-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment "ns1/svc1:p80" -s 10.180.0.1 -j KUBE-MARK-MASQ',
        '-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment "ns1/svc1:p80" -m tcp -p tcp -j DNAT '
        '--to-destination 10.180.0.1:80',
    ]
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in nat
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in nat
    # The nodeports jump is the last rule of KUBE-SERVICES.
    assert rules(nat, "KUBE-SERVICES")[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    # Only our chains are declared: restoring with --noflush leaves the built-in chains alone.
    declared = [line for line in text.splitlines() if line.startswith(":")]
    assert all(line.startswith(":KUBE-") for line in declared)
    assert text.startswith("*filter\n") and text.count("COMMIT") == 2


def test_probabilities_for_n_endpoints():
    eps = [ep(f"10.231.0.{i}") for i in range(1, 6)]
    text = ipt.render([sp()], {("ns1", "svc1", "p80"): eps}, **NODE)
    chain = rules(nat_lines(text), "KUBE-SVC-XPGD46QRK7WJZT7O")[1:]  # after the masquerade rule
    probs = [re.search(r"--probability (\S+)", r).group(1) if "--probability" in r else None for r in chain]
    assert probs == ["0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000", None]
    assert [r.split("-j ")[1] for r in chain] == [ipt.sep_chain(sp(), e) for e in eps]
    assert ipt.probability(3) == "0.3333333333"


def test_deterministic_output():
    services = [sp(name=n, cluster_ips=(f"10.232.0.{i}",)) for i, n in enumerate(["b", "a", "c"], 10)]
    eps = {("ns1", n, "p80"): [ep("10.231.0.2"), ep("10.231.0.1")] for n in "abc"}
    one = ipt.render(services, eps, **NODE)
    assert one == ipt.render(list(reversed(services)), eps, **NODE)
    cluster_rules = [r for r in rules(nat_lines(one), "KUBE-SERVICES") if "cluster IP" in r]
    assert [r.split('"')[1] for r in cluster_rules] == ["ns1/a:p80 cluster IP", "ns1/b:p80 cluster IP",
                                                       "ns1/c:p80 cluster IP"]


def test_client_ip_affinity():
    s = sp(session_affinity="ClientIP", affinity_timeout=300)
    eps = [ep("10.231.0.1"), ep("10.231.0.2")]
    nat = nat_lines(ipt.render([s], {s.key: eps}, **NODE))
    svc_rules = rules(nat, ipt.svc_chain(s))
    for e, rule in zip(eps, svc_rules[1:3]):
        sep = ipt.sep_chain(s, e)
        assert f"-m recent --name {sep} --rcheck --seconds 300 --reap -j {sep}" in rule
    dnat = rules(nat, ipt.sep_chain(s, eps[0]))[1]
    assert f"-m recent --name {ipt.sep_chain(s, eps[0])} --set -m tcp -p tcp -j DNAT" in dnat


def test_reject_without_endpoints():
    s = sp(node_port=30080, external_ips=("192.0.2.9",))
    text = ipt.render([s], {}, **NODE)
    filt, nat = filter_lines(text), nat_lines(text)
    assert '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints" -m tcp -p tcp ' \
           '-d 10.232.0.10 --dport 80 -j REJECT' in filt
    ext = rules(filt, "KUBE-EXTERNAL-SERVICES")
    assert any("-d 192.0.2.9 --dport 80 -j REJECT" in r for r in ext)
    assert any("-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT" in r for r in ext)
    assert not any("KUBE-SVC-" in line or "KUBE-SEP-" in line or "KUBE-EXT-" in line for line in nat)


def test_ready_then_serving_terminating_fallback():
    s = sp()
    eps = [ep("10.231.0.1", ready=False, serving=True, terminating=True),
           ep("10.231.0.2", ready=False, serving=False, terminating=True)]
    nat = nat_lines(ipt.render([s], {s.key: eps}, **NODE))
    targets = [r.split("-j ")[1] for r in rules(nat, ipt.svc_chain(s))[1:]]
    assert targets == [ipt.sep_chain(s, eps[0])]
    eps.append(ep("10.231.0.3"))  # a ready one: only it is used
    nat = nat_lines(ipt.render([s], {s.key: eps}, **NODE))
    assert [r.split("-j ")[1] for r in rules(nat, ipt.svc_chain(s))[1:]] == [ipt.sep_chain(s, eps[2])]


def test_nodeport_cluster_policy():
    s = sp(node_port=30080)
    nat = nat_lines(ipt.render([s], {s.key: [ep("10.231.0.1")]}, **NODE))
    assert rules(nat, "KUBE-NODEPORTS") == [
        f'-A KUBE-NODEPORTS -m comment --comment "ns1/svc1:p80" -m tcp -p tcp --dport 30080 -j {ipt.ext_chain(s)}']
    assert rules(nat, ipt.ext_chain(s)) == [
        f'-A {ipt.ext_chain(s)} -m comment --comment "masquerade traffic for ns1/svc1:p80 external destinations" '
        '-j KUBE-MARK-MASQ',
        f'-A {ipt.ext_chain(s)} -j {ipt.svc_chain(s)}']


def test_nodeport_addresses_restrict_destinations():
    s = sp(node_port=30080)
    nat = nat_lines(ipt.render([s], {s.key: [ep("10.231.0.1")]}, nodeport_addresses=["10.233.0.0/24"], **NODE))
    last = rules(nat, "KUBE-SERVICES")[-1]
    assert last.endswith("-d 10.233.0.1 -j KUBE-NODEPORTS")
    nat = nat_lines(ipt.render([s], {s.key: [ep("10.231.0.1")]}, localhost_nodeports=False, **NODE))
    assert rules(nat, "KUBE-SERVICES")[-1].endswith("--dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS")


def test_external_traffic_policy_local():
    s = sp(node_port=30080, external_traffic_policy="Local", health_check_node_port=32000)
    local, remote = ep("10.231.0.1", node_name="n1"), ep("10.231.0.2", node_name="n2")
    text = ipt.render([s], {s.key: [local, remote]}, **NODE)
    nat, filt = nat_lines(text), filter_lines(text)
    ext = rules(nat, ipt.ext_chain(s))
    assert ext[0].endswith(f"-s 10.231.0.0/16 -j {ipt.svc_chain(s)}")  # pods use the cluster policy
    assert ext[-1] == f"-A {ipt.ext_chain(s)} -j {ipt.svl_chain(s)}"
    svl = [r.split("-j ")[1] for r in rules(nat, ipt.svl_chain(s))]
    assert svl == [ipt.sep_chain(s, local)]
    svc = [r.split("-j ")[1] for r in rules(nat, ipt.svc_chain(s))[1:]]
    assert svc == [ipt.sep_chain(s, local), ipt.sep_chain(s, remote)]
    assert any("--dport 32000 -j ACCEPT" in r for r in rules(filt, "KUBE-NODEPORTS"))
    # No local endpoint: external traffic is dropped, the cluster IP still works.
    text = ipt.render([s], {s.key: [remote]}, **NODE)
    assert any("has no local endpoints" in r and r.endswith("--dport 30080 -j DROP")
               for r in rules(filter_lines(text), "KUBE-EXTERNAL-SERVICES"))
    assert f"-A {ipt.ext_chain(s)} -j {ipt.svl_chain(s)}" not in nat_lines(text)
    assert any(ipt.svc_chain(s) in r for r in rules(nat_lines(text), "KUBE-SERVICES"))


def test_internal_traffic_policy_local():
    s = sp(internal_traffic_policy="Local")
    local, remote = ep("10.231.0.1", node_name="n1"), ep("10.231.0.2", node_name="n2")
    nat = nat_lines(ipt.render([s], {s.key: [local, remote]}, **NODE))
    assert any(r.endswith(f"-j {ipt.svl_chain(s)}") for r in rules(nat, "KUBE-SERVICES"))
    assert f":{ipt.svc_chain(s)} - [0:0]" not in nat
    assert f":{ipt.sep_chain(s, remote)} - [0:0]" not in nat
    text = ipt.render([s], {s.key: [remote]}, **NODE)
    assert any(r.endswith("-d 10.232.0.10 --dport 80 -j DROP") for r in rules(filter_lines(text), "KUBE-SERVICES"))


def test_load_balancer_source_ranges():
    s = sp(load_balancer_ips=("5.6.7.8",), load_balancer_source_ranges=("203.0.113.0/25", "10.233.0.0/24"),
           node_port=30080)
    text = ipt.render([s], {s.key: [ep("10.231.0.1")]}, **NODE)
    nat, filt = nat_lines(text), filter_lines(text)
    assert any(r.endswith(f"-d 5.6.7.8 --dport 80 -j {ipt.fw_chain(s)}") for r in rules(nat, "KUBE-SERVICES"))
    fw = rules(nat, ipt.fw_chain(s))
    assert [r.split(" -s ")[1] for r in fw[:3]] == [f"203.0.113.0/25 -j {ipt.ext_chain(s)}",
                                                   f"10.233.0.0/24 -j {ipt.ext_chain(s)}",
                                                   f"5.6.7.8 -j {ipt.ext_chain(s)}"]  # node IP is in a range
    assert "-j" not in fw[3]
    assert any(r.endswith("-d 5.6.7.8 --dport 80 -j DROP") for r in rules(filt, "KUBE-PROXY-FIREWALL"))


def test_multi_protocol_and_masquerade_all():
    tcp, udp, sctp = sp(port_name="a"), sp(port_name="b", proto="UDP", port=53), sp(port_name="c", proto="SCTP")
    eps = {tcp.key: [ep("10.231.0.1")], udp.key: [ep("10.231.0.1", 5353)], sctp.key: [ep("10.231.0.1")]}
    text = ipt.render([tcp, udp, sctp], eps, masquerade_all=True, **NODE)
    nat = nat_lines(text)
    assert rules(nat, ipt.svc_chain(udp))[0].endswith("-m udp -p udp -d 10.232.0.10 --dport 53 -j KUBE-MARK-MASQ")
    assert "-m sctp -p sctp -j DNAT --to-destination 10.231.0.1:80" in rules(nat, ipt.sep_chain(sctp, eps[sctp.key][0]))[1]
    # Without a cluster CIDR (and without masquerade-all) nothing is masqueraded on the cluster IP path.
    text = ipt.render([tcp], eps, node_name="n1", node_ips=["10.233.0.1"])
    assert "KUBE-MARK-MASQ" not in " ".join(rules(nat_lines(text), ipt.svc_chain(tcp)))


def test_stale_chains_are_deleted_in_the_same_restore():
    s = sp()
    active = ipt.render([s], {s.key: [ep("10.231.0.1")]}, **NODE)
    stale_sep = ipt.sep_chain(s, ep("10.231.0.9"))
    existing = {"KUBE-SERVICES", "KUBE-SVC-OLDOLDOLDOLDOLD1", stale_sep, ipt.svc_chain(s), "PREROUTING",
                "CNI-FOO", "KUBE-KUBELET-CANARY"}
    text = ipt.render([s], {s.key: [ep("10.231.0.1")]}, existing_chains=existing, **NODE)
    nat = nat_lines(text)
    for stale in ("KUBE-SVC-OLDOLDOLDOLDOLD1", stale_sep):
        assert f":{stale} - [0:0]" in nat and f"-X {stale}" in nat
    assert f"-X {ipt.svc_chain(s)}" not in nat
    assert not any(line.startswith("-X") and ("CNI" in line or "CANARY" in line or "PREROUTING" in line)
                   for line in nat)
    assert [line for line in text.splitlines() if not line.startswith(("-X", ":KUBE-SVC-OLD", f":{stale_sep}"))] \
        == active.splitlines()


class FakeTools:
    """Stands in for Backend.run: records argv, answers -C/-L from `present`, iptables-save from `saved`."""

    def __init__(self, present=(), saved=""):
        self.calls: list[list[str]] = []
        self.inputs: list[str] = []
        self.present = set(present)
        self.saved = saved
        self.fail_restore = False

    def __call__(self, *argv, input=None, check=True):
        import subprocess
        self.calls.append(list(argv))
        rc = 0
        if "-C" in argv:
            rc = 0 if argv[argv.index("-C") + 1] in self.present else 1
        if "-L" in argv:
            rc = 0 if argv[-1] in self.present else 1
        if "-D" in argv:
            rc = 0 if argv[argv.index("-D") + 1] in self.present else 1
        if input is not None and not isinstance(input, str):
            input = "".join(input)
        if argv[0].endswith("-restore"):
            self.inputs.append(input)
            if self.fail_restore:
                return subprocess.CompletedProcess(argv, 1, "", "iptables-restore: line 3 failed")
        out = self.saved if argv[0].endswith("-save") else ""
        return subprocess.CompletedProcess(argv, rc, out, "")


def backend(tools: FakeTools) -> ipt.IptablesBackend:
    b = ipt.IptablesBackend(NodeContext(node_name="n1", node_ips=("10.233.0.1",), cluster_cidr="10.231.0.0/16"),
                            variant="nft")
    b.run = tools
    b.run_lines = lambda *argv: tools(*argv).stdout.splitlines()
    return b


def test_full_sync_inserts_jumps_sets_localnet_and_deletes_stale_chains():
    save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-STALESTALESTALE1 - [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"
    tools = FakeTools(present={"PREROUTING"}, saved=save)
    b = backend(tools)
    assert b.sync({}, {}, None) is True
    inserted = [c for c in tools.calls if "-I" in c]
    assert all(c[0] == "iptables-nft" or c[0] == "iptables" for c in inserted)
    assert ["-w", "-t", "nat", "-I", "PREROUTING"] not in [c[1:6] for c in inserted]
    assert ["-w", "-t", "nat", "-I", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j",
            "KUBE-SERVICES"] in [c[1:] for c in inserted]
    assert ["sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=1"] in tools.calls
    assert "-X KUBE-SVC-STALESTALESTALE1" in tools.inputs[-1]
    assert [c for c in tools.calls if c[0].endswith("-restore")][0][1:] == ["-w", "--noflush"]


def test_partial_sync_writes_only_what_changed():
    tools = FakeTools(present={"KUBE-PROXY-CANARY"})
    b = backend(tools)
    a, c = sp(name="a", cluster_ips=("10.232.0.1",)), sp(name="c", cluster_ips=("10.232.0.3",))
    services = {a.key: a, c.key: c}
    eps = {a.key: [ep("10.231.0.1")], c.key: [ep("10.231.0.3")]}
    b.sync(services, eps, None)
    # An endpoint change: only a's service chain and endpoint chains, no shared chain.
    eps2 = {**eps, a.key: [ep("10.231.0.1"), ep("10.231.0.2")]}
    assert b.sync(services, eps2, {("ns1", "a")}) is False
    text = tools.inputs[-1]
    assert ":KUBE-SERVICES" not in text and "*filter" not in text
    assert f":{ipt.svc_chain(a)} - [0:0]" in text and f":{ipt.sep_chain(a, ep('10.231.0.2'))} - [0:0]" in text
    assert f":{ipt.sep_chain(a, ep('10.231.0.1'))} " not in text  # unchanged endpoint chain: untouched
    assert ipt.svc_chain(c) not in text
    # Losing every endpoint: the ClusterIP rule moves to a filter REJECT; the chains go in the same restore.
    assert b.sync(services, {c.key: eps[c.key]}, {("ns1", "a")}) is False
    text = tools.inputs[-1]
    assert ":KUBE-SERVICES - [0:0]" in text and "ns1/a:p80 has no endpoints" in text and "-j REJECT" in text
    assert f"-X {ipt.svc_chain(a)}" in text and f"-X {ipt.sep_chain(a, ep('10.231.0.2'))}" in text
    assert f"-j {ipt.svc_chain(c)}" in text  # the shared chain is whole: c's jump is rewritten too
    # Nothing changed: nothing restored.
    before = len(tools.inputs)
    b.sync(services, {c.key: eps[c.key]}, {("ns1", "a")})
    assert len(tools.inputs) == before


def test_partial_and_full_sync_reach_the_same_rules():
    tools = FakeTools(present={"KUBE-PROXY-CANARY"})
    b = backend(tools)
    a = sp(name="a", cluster_ips=("10.232.0.1",), node_port=30001)
    b.sync({a.key: a}, {a.key: [ep("10.231.0.1")]}, None)
    b.sync({a.key: a}, {a.key: [ep("10.231.0.2")]}, {("ns1", "a")})
    partial_state = dict(b.written_own)
    b.sync({a.key: a}, {a.key: [ep("10.231.0.2")]}, None)
    assert b.written_own == partial_state


def test_failed_restore_raises_and_forces_a_full_sync():
    tools = FakeTools(present={"KUBE-PROXY-CANARY"})
    b = backend(tools)
    a = sp(name="a")
    b.sync({a.key: a}, {a.key: [ep("10.231.0.1")]}, None)
    tools.fail_restore = True
    with pytest.raises(SyncFailed, match="line 3 failed"):
        b.sync({a.key: a}, {a.key: [ep("10.231.0.2")]}, {("ns1", "a")})
    tools.fail_restore = False
    assert b.sync({a.key: a}, {a.key: [ep("10.231.0.2")]}, {("ns1", "a")}) is True


def test_a_vanished_canary_forces_a_full_sync():
    tools = FakeTools(present={"KUBE-PROXY-CANARY"})
    b = backend(tools)
    b.sync({}, {}, None)
    assert b.sync({}, {}, set()) is False
    tools.present.clear()  # someone flushed the tables
    assert b.sync({}, {}, set()) is True


def test_cleanup_removes_jumps_and_our_chains_only():
    save = ("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-ABC - [0:0]\n:OTHER - [0:0]\n"
            "COMMIT\n*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n")
    tools = FakeTools(saved=save)
    b = backend(tools)
    assert b.cleanup() is True
    restores = [t for t in tools.inputs if t]
    assert restores and all("OTHER" not in t for t in restores)
    assert "-X KUBE-SEP-ABC" in restores[0] and "-X KUBE-FORWARD" in restores[0]
    assert backend(FakeTools(saved="*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n")).cleanup() is False
