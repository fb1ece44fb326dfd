"""The systemd units in systemd/: kubeadm's shape, and `systemd-analyze verify` finds nothing to say.

verify runs against a scratch root holding this host's own system units (for the targets the units
name), the units at the paths the pynode role installs them to, and stand-ins for /usr/bin/kubelet
and /usr/bin/kube-proxy (verify checks that ExecStart= names an executable). verify exits 0 even when it
warns (an unknown key, a bad value: systemd ignores the line), so any output is a failure here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
HOST_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
UNITS = {
    "kubelet.service": "/etc/systemd/system/kubelet.service",
    "kubelet.service.d/10-kubeadm.conf": "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
    "kube-proxy.service": "/etc/systemd/system/kube-proxy.service",
}


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive, in order (systemd allows repeats)."""
    found, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(path: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives((SYSTEMD / path).read_text()) if (s, k) == (section, key)]


def test_dropin_is_kubeadms():
    dropin = "kubelet.service.d/10-kubeadm.conf"
    assert values(dropin, "Service", "Environment") == [
        '"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf '
        '--kubeconfig=/etc/kubernetes/kubelet.conf"',
        '"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"',
    ]
    assert values(dropin, "Service", "EnvironmentFile") == ["-/var/lib/kubelet/kubeadm-flags.env",
                                                            "-/etc/default/kubelet"]
    assert values(dropin, "Service", "ExecStart") == [
        "", "/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS"]
    # pynode's one addition: the unit waits, inactive, for kubeadm to write the kubelet's config.
    assert values(dropin, "Unit", "ConditionPathExists") == ["/var/lib/kubelet/config.yaml"]


@pytest.mark.parametrize("unit", ["kubelet.service", "kube-proxy.service"])
def test_unit_runs_as_a_notify_service_that_restarts_calmly(unit):
    one = lambda section, key: values(unit, section, key)[-1]  # noqa: E731
    assert one("Service", "Type") == "notify"
    assert one("Service", "WatchdogSec")
    assert one("Service", "Restart") == "always"
    assert int(one("Service", "RestartSec")) >= 5  # never a hot loop
    assert one("Service", "KillMode") == "process"  # stopping the agent never kills a container
    assert "2" in one("Service", "RestartPreventExitStatus").split()  # a refused flag or config: stay failed
    assert {"network-online.target"} <= set(one("Unit", "After").split())
    assert "network-online.target" in one("Unit", "Wants").split()
    assert one("Install", "WantedBy") == "multi-user.target"


def test_kubelet_starts_after_the_runtime():
    assert "containerd.service" in values("kubelet.service", "Unit", "After")[-1].split()


def test_kube_proxy_reads_kubeadms_file():
    assert values("kube-proxy.service", "Service", "ExecStart")[-1].startswith(
        "/usr/bin/kube-proxy --config=/var/lib/kube-proxy/config.conf")
    assert values("kube-proxy.service", "Unit", "ConditionPathExists") == ["/var/lib/kubelet/config.yaml",
                                                                           "/var/lib/kube-proxy/config.conf"]
    assert values("kube-proxy.service", "Unit", "PartOf") == ["kubelet.service"]  # kubeadm reset stops it too


def test_every_unit_file_is_checked():
    shipped = {str(p.relative_to(SYSTEMD)) for p in SYSTEMD.rglob("*") if p.suffix in (".service", ".conf")}
    assert shipped == set(UNITS)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (Debian package systemd)")
@pytest.mark.skipif(HOST_UNITS is None, reason="no system unit directory on this host")
def test_systemd_analyze_verify(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for program in ("kubelet", "kube-proxy"):
        stand_in = root / "usr/bin" / program
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    for source, target in UNITS.items():
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SYSTEMD / source, path)
    units = [t for t in UNITS.values() if t.endswith(".service")]
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (Debian package systemd)")
@pytest.mark.skipif(HOST_UNITS is None, reason="no system unit directory on this host")
def test_verify_would_catch_a_broken_line(tmp_path):
    """The check above means something: a line systemd ignores shows up in verify's output."""
    root = tmp_path / "root"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/kube-proxy").write_text("#!/bin/sh\n")
    (root / "usr/bin/kube-proxy").chmod(0o755)
    unit = root / "etc/systemd/system/kube-proxy.service"
    unit.parent.mkdir(parents=True)
    unit.write_text((SYSTEMD / "kube-proxy.service").read_text().replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                           "/etc/systemd/system/kube-proxy.service"], capture_output=True, text=True, timeout=60)
    assert "notifyy" in proc.stdout + proc.stderr
