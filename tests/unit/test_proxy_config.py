"""pyproxy's command line and KubeProxyConfiguration file, read the way upstream kube-proxy reads them."""

from __future__ import annotations

import pytest
import yaml

from pyproxy.config import ConfigError, parse, render_document


def write(tmp_path, **fields) -> str:
    doc = {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", **fields}
    path = tmp_path / "config.conf"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_defaults_are_upstreams():
    cfg = parse(["--hostname-override=n1"])
    assert (cfg.mode, cfg.sync_period, cfg.min_sync_period) == ("iptables", 30.0, 1.0)
    assert cfg.healthz_bind_address == "0.0.0.0:10256" and cfg.metrics_bind_address == "127.0.0.1:10249"
    assert cfg.masquerade_bit == 14 and cfg.localhost_nodeports is True and cfg.hostname == "n1"


def test_flags_without_a_config_file():
    cfg = parse(["--proxy-mode", "nftables", "--iptables-min-sync-period=250ms", "--iptables-sync-period=1m",
                 "--cluster-cidr=10.222.0.0/16", "--nodeport-addresses=primary,10.0.0.0/8", "--masquerade-all",
                 "--kubeconfig", "/k.conf", "--metrics-bind-address=0.0.0.0:10249", "-v=4",
                 "--hostname-override", "  Node-A "])
    assert cfg.mode == "nftables" and cfg.min_sync_period == 0.25 and cfg.sync_period == 60
    assert cfg.cluster_cidrs == ["10.222.0.0/16"] and cfg.nodeport_addresses == ["primary", "10.0.0.0/8"]
    assert cfg.masquerade_all and cfg.kubeconfig == "/k.conf" and cfg.metrics_bind_address == "0.0.0.0:10249"
    assert cfg.verbosity == 4 and cfg.hostname == "node-a"


def test_config_file_wins_over_most_flags(tmp_path):
    path = write(tmp_path, mode="nftables", clientConnection={"kubeconfig": "/proxy.conf"},
                 nftables={"minSyncPeriod": "2s", "syncPeriod": "45s", "masqueradeAll": True},
                 clusterCIDR="10.1.0.0/16", nodePortAddresses=["10.2.0.0/24"])
    cfg = parse([f"--config={path}", "--proxy-mode=iptables", "--hostname-override=n9", "--v=3"])
    assert cfg.mode == "nftables" and cfg.ignored_flags == ["--proxy-mode"]
    assert (cfg.min_sync_period, cfg.sync_period, cfg.masquerade_all) == (2.0, 45.0, True)
    assert cfg.kubeconfig == "/proxy.conf" and cfg.cluster_cidrs == ["10.1.0.0/16"]
    assert cfg.hostname == "n9" and cfg.verbosity == 3  # these flags still apply, as upstream


@pytest.mark.parametrize("fields, message", [
    ({"bogus": 1}, 'unknown field "bogus"'),
    ({"iptables": {"syncPerod": "1s"}}, 'unknown field "iptables.syncPerod"'),
    ({"mode": "userspace"}, "unknown proxy mode 'userspace'"),
    ({"iptables": {"minSyncPeriod": "soon"}}, "iptables.minSyncPeriod"),
    ({"iptables": {"masqueradeBit": 40}}, "range [0, 31]"),
    ({"clusterCIDR": "10.0.0.0/33"}, "invalid CIDR"),
    ({"metricsBindAddress": "localhost:99999"}, "metricsBindAddress"),
    ({"iptables": "fast"}, "iptables: expected dict"),
])
def test_bad_config_files_get_clear_errors(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse([f"--config={write(tmp_path, **fields)}"])


def test_unreadable_or_foreign_config_files(tmp_path):
    with pytest.raises(ConfigError, match="failed to read"):
        parse([f"--config={tmp_path / 'missing.conf'}"])
    bad = tmp_path / "bad.conf"
    bad.write_text("kind: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse([f"--config={bad}"])
    bad.write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
    with pytest.raises(ConfigError, match="expected kind KubeProxyConfiguration"):
        parse([f"--config={bad}"])
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        parse([f"--config={bad}"])
    bad.write_bytes(b"}{ not: [yaml\n\x00\x01binary")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse([f"--config={bad}"])


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unknown flag: --no-such-flag"),
    (["--proxy-mode"], "flag needs an argument"),
    (["--masquerade-all=maybe"], "want true or false"),
    (["--hostname-override= "], "empty hostname-override"),
    (["extra"], "pyproxy takes only flags"),
])
def test_bad_flags(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_write_config_to_round_trips(tmp_path):
    cfg = parse(["--proxy-mode=nftables", "--iptables-min-sync-period=3s", "--hostname-override=n1"])
    path = tmp_path / "out.conf"
    path.write_text(render_document(cfg))
    again = parse([f"--config={path}"])
    assert (again.mode, again.min_sync_period, again.hostname) == ("nftables", 3.0, "n1")


def test_refused_flag_exits_2_for_the_units_restart_prevent_exit_status(capsys):
    from pyproxy.cli import main

    assert main(["--bogus-flag"]) == 2
    assert "--bogus-flag" in capsys.readouterr().err


def test_a_start_cleans_up_only_what_cannot_share_the_kernel_with_its_mode():
    from pyproxy.cli import leftover_modes

    # iptables and ipvs share KUBE-SERVICES and the jumps into it: neither start may remove the other's.
    assert leftover_modes("iptables") == ["nftables"]
    assert leftover_modes("ipvs") == ["nftables"]
    assert leftover_modes("nftables") == ["iptables", "ipvs"]
